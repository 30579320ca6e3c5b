"""Storages under torn writes: a journal cut inside its last record resumes with every earlier
trial intact; a corrupt record in the middle is refused with its offset; SQLite under the
same fault is refused in one line. Real Optuna storages through the project's opener."""

import os
import sqlite3

import optuna
import pytest

from nas.errors import UsageError
from nas.search.storage import JournalCorrupt, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _make_study(url, n=4):
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    for i in range(n):
        trial = study.ask()
        trial.suggest_int("x", 0, 100)
        trial.set_user_attr("arch", f"arch-{i}")
        study.tell(trial, float(i))
    return study


def _last_record_span(path):
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    return data, start, len(data)


def test_journal_torn_inside_its_last_record_resumes_at_20_offsets(tmp_path, capsys):
    original = tmp_path / "orig.journal"
    _make_study(f"journal:{original}")
    data, start, end = _last_record_span(original)
    expected = [(t.number, t.state, t.values) for t in
                optuna.load_study(study_name="s", storage=open_storage(str(original))).get_trials()]
    # 20 cut points inside the last record, its first byte to its trailing newline
    cuts = sorted({start + 1 + (end - 2 - start) * k // 19 for k in range(20)})
    assert len(cuts) == 20
    for cut in cuts:
        path = tmp_path / f"cut{cut}.journal"
        path.write_bytes(data[:cut])
        study = optuna.load_study(study_name="s", storage=open_storage(str(path)))
        warning = capsys.readouterr().err
        if cut == end - 1:  # only the newline was lost: the record is whole and kept
            assert [(t.number, t.state, t.values) for t in study.get_trials()] == expected
            assert not (tmp_path / f"cut{cut}.journal.corrupt").exists()
        else:
            assert f"{path}.corrupt" in warning and warning.count("\n") == 1
            assert (tmp_path / f"cut{cut}.journal.corrupt").read_bytes() == data[start:cut] + b"\n"
            assert path.read_bytes() == data[:start]
            trials = study.get_trials()
            # the last record (the final tell) is lost; every earlier trial is intact
            assert [(t.number, t.state, t.values) for t in trials[:-1]] == expected[:-1]
        # resuming appends on a fresh line and the journal stays readable
        trial = study.ask()
        study.tell(trial, 99.0)
        again = optuna.load_study(study_name="s", storage=open_storage(str(path))).get_trials()
        assert again[-1].values == [99.0]
        assert [t.values for t in again[:3]] == [e[2] for e in expected[:3]]


def test_append_after_a_writer_died_mid_record_starts_on_a_fresh_line(tmp_path, capsys):
    path = tmp_path / "j.journal"
    study = _make_study(f"journal:{path}", n=2)
    with open(path, "ab") as f:  # another process died half-way through its record
        f.write(b'{"op_code":5,"worker_id":"x","trial_id":')
    trial = study.ask()
    study.tell(trial, 7.0)
    assert "moved to" in capsys.readouterr().err
    trials = optuna.load_study(study_name="s", storage=open_storage(str(path))).get_trials()
    assert [t.values for t in trials] == [[0.0], [1.0], [7.0]]
    assert (tmp_path / "j.journal.corrupt").read_bytes().startswith(b'{"op_code":5')


def test_failed_append_leaves_no_torn_record(tmp_path):
    path = tmp_path / "j.journal"
    study = _make_study(f"journal:{path}", n=1)
    before = path.read_bytes()
    storage = study._storage
    backend = storage._backend
    # a record too large for the file size limit set below fails half-way, like a full disk
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = __import__("signal").signal(__import__("signal").SIGXFSZ, __import__("signal").SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 100, hard))
    try:
        with pytest.raises(OSError):
            backend.append_logs([{"op_code": 0, "worker_id": "w", "study_name": "x" * 1000,
                                  "directions": [1]}])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        __import__("signal").signal(__import__("signal").SIGXFSZ, old_handler)
    assert path.read_bytes() == before
    assert [t.values for t in optuna.load_study(study_name="s", storage=open_storage(str(path))).get_trials()] == [[0.0]]


def test_corrupt_record_in_the_middle_is_refused_with_offset(tmp_path):
    path = tmp_path / "j.journal"
    _make_study(f"journal:{path}", n=2)
    lines = path.read_bytes().splitlines(keepends=True)
    offset = len(lines[0]) + len(lines[1])
    lines[2] = b"garbage" + lines[2]
    path.write_bytes(b"".join(lines))
    with pytest.raises(JournalCorrupt) as err:
        open_storage(str(path))
    message = str(err.value)
    assert f"byte {offset}" in message and f"truncate -s {offset}" in message and "\n" not in message
    os.truncate(path, offset)  # the recovery command the message gives
    study = optuna.load_study(study_name="s", storage=open_storage(str(path)))
    assert study.study_name == "s"


def test_record_valid_json_but_damaged_inside_is_refused_with_offset(tmp_path):
    """A flipped byte inside a record's escaped `distribution` string keeps the line valid JSON;
    Optuna's replay then raised JSONDecodeError on every open (exit 1). Refused like any corrupt
    middle record, with its offset, and the recovery the message gives works."""
    path = tmp_path / "j.journal"
    _make_study(f"journal:{path}", n=3)
    lines = path.read_bytes().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if b'"distribution"' in line)
    offset = sum(len(line) for line in lines[:index])
    lines[index] = lines[index].replace(b'{\\"name\\":', b'{\\"name\\":#garbage#', 1)
    assert b"#garbage#" in lines[index]
    path.write_bytes(b"".join(lines))
    for _ in range(2):  # every open, not only the first
        with pytest.raises(JournalCorrupt) as err:
            open_storage(str(path))
        message = str(err.value)
        assert f"byte {offset} (line {index + 1})" in message and f"truncate -s {offset}" in message
        assert "\n" not in message
    os.truncate(path, offset)
    study = optuna.load_study(study_name="s", storage=open_storage(str(path)))
    assert study.study_name == "s"


def test_non_journal_files_fifos_and_memory_sqlite_are_refused(tmp_path):
    text = tmp_path / "notes.journal"
    text.write_text("my notes\n")
    with pytest.raises(UsageError, match="not an Optuna journal"):
        open_storage(str(text))
    assert text.read_text() == "my notes\n"
    fifo = tmp_path / "f.journal"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file"):
        open_storage(str(fifo))
    for url in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(UsageError, match="in-memory"):
            open_storage(url)
    other = tmp_path / "notes.txt"
    other.write_text("hello\n")
    with pytest.raises(UsageError, match="not an SQLite database"):
        open_storage(f"sqlite:///{other}")
    assert other.read_text() == "hello\n"


def test_sqlite_truncated_inside_its_last_page(tmp_path):
    """SQLite under the same fault: the file is cut inside its last page. SQLite has no record
    boundary to recover at; what it does is measured: either the study still opens with every
    trial, or it is refused in one line, never silently with trials missing."""
    db = tmp_path / "s.db"
    _make_study(f"sqlite:///{db}")
    data = db.read_bytes()
    page = sqlite3.connect(db).execute("PRAGMA page_size").fetchone()[0]
    outcomes = set()
    for k in range(1, 21):
        cut = len(data) - page + page * k // 21
        path = tmp_path / f"cut{k}.db"
        path.write_bytes(data[:cut])
        try:
            trials = optuna.load_study(study_name="s", storage=open_storage(f"sqlite:///{path}")).get_trials()
        except UsageError as e:
            assert "\n" not in str(e)
            outcomes.add("refused")
            continue
        except Exception as e:  # noqa: BLE001 - what SQLite raises is what is measured
            outcomes.add(f"raised {type(e).__name__}")
            continue
        assert [t.values for t in trials] == [[0.0], [1.0], [2.0], [3.0]]
        outcomes.add("intact")
    print("sqlite truncated inside its last page:", sorted(outcomes))
    assert all(o in ("refused", "intact") for o in outcomes), outcomes


def test_a_trial_orphaned_before_it_named_its_worker_is_failed_and_retried(tmp_path, monkeypatch):
    """A worker killed between creating a trial and the objective's first write leaves a
    RUNNING trial with no worker recorded: the next start fails it once it is past the grace
    (waiting out the rest) and re-enqueues its parameters; a live worker's trial stays."""
    import time

    from nas.search import storage
    from nas.search.records import trial_attrs
    from nas.search.storage import fail_dead_local_trials, worker_id

    monkeypatch.setattr(storage, "ORPHAN_GRACE_S", 1.0)
    study = optuna.create_study(study_name="s", storage=open_storage(f"journal:{tmp_path / 's.journal'}"))
    orphan = study.ask()
    orphan.suggest_int("x", 0, 9)
    live = study.ask()
    for k, v in trial_attrs(worker=worker_id()).items():
        live.set_user_attr(k, v)
    t0 = time.monotonic()
    assert fail_dead_local_trials(study) == 1
    assert time.monotonic() - t0 >= 0.5  # it waited for the orphan to age past the grace
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[orphan.number] == optuna.trial.TrialState.FAIL
    assert states[live.number] == optuna.trial.TrialState.RUNNING
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs.get("fixed_params") for t in waiting] == [{"x": orphan.params["x"]}]
