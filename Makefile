# Two entry points a new user types (see README.md). Both set everything up first.
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: setup search test test-all

setup: .venv/.installed /usr/share/datasets/fashion-mnist

.venv/.installed: pyproject.toml constraints.txt $(wildcard nas/kernels/*.c nas/kernels/*.h)
	python3 -m venv .venv
	$(PIP) install -q -c constraints.txt -e '.[test]'
	touch $@

/usr/share/datasets/fashion-mnist:
	apt-get update -q && apt-get install -y -q dataset-fashion-mnist

search: setup
	.venv/bin/nas search --target-mem 5MB
	.venv/bin/nas report --study nas -o report.html
	.venv/bin/nas export --study nas --best -o out/ --force   # a rerun replaces the bundle

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m ''
