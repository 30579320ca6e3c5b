"""No import runs back up the package list of docs/architecture.md (issue 23).

The order is read from the doc itself (its first code block: one line per package, top to
bottom; several on one line count left to right), and every `import` / `from ... import`
under `nas/` (module level or inside functions) is checked against it: a module may import
only packages below its own. Every package under `nas/` must be placed in the list. Not
arrows: `import nas` (the version) and imports under `if __name__ == "__main__":` (script
entry points, never run on import). The exceptions are `ALLOWED`, each with its reason.
Static analysis only (ast): fast, imports nothing.
"""

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NAS = REPO / "nas"

# (importing file, imported package) -> why that arrow may run up the list
ALLOWED = {
    ("nas/cost/graph.py", "nas/blocks/"):
        "the block kind files' `expand` (torch-free; tests/test_blocks.py checks nas.cost imports no torch)",
    ("nas/measure/timing.py", "nas/export/"):
        "build_for_timing: what is timed is the packed model `nas infer` runs (inside the function)",
}


def documented_order() -> list[str]:
    """Package keys ('nas/cost/', 'nas/units.py') top to bottom, from docs/architecture.md."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"```\n(.*?)```", text, flags=re.S).group(1)
    order = []
    for line in block.splitlines():
        m = re.match(r"^((?:nas/[\w./]+(?:, )?)+)", line)
        if m:
            order += [p.strip() for p in m.group(1).split(",") if p.strip()]
    return order


def key_of_file(path: Path) -> str:
    rel = path.relative_to(REPO).as_posix()
    parts = rel.split("/")
    return rel if len(parts) == 2 else f"{parts[0]}/{parts[1]}/"


def key_of_module(module: str) -> str | None:
    """'nas.cost.graph' -> 'nas/cost/'; 'nas.units' -> 'nas/units.py'; 'nas' -> None (the root)."""
    parts = module.split(".")
    if parts[0] != "nas" or len(parts) == 1:
        return None
    return f"nas/{parts[1]}/" if (NAS / parts[1]).is_dir() else f"nas/{parts[1]}.py"


def _main_guard(node) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in t.comparators))


def imports(path: Path, module: str | None = None) -> list[tuple[str, int]]:
    """(imported module, line) for every import in `path` (the module `module`, default: from
    its place under the repo) outside `if __name__ == "__main__":`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = module or ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if path.name == "__init__.py":
        package = package[:-1]
    out = []

    def visit(node):
        if _main_guard(node):
            return
        if isinstance(node, ast.Import):
            out.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            out.append((base, node.lineno))
            if base == "nas":  # `from nas import fsio`
                out.extend((f"nas.{a.name}", node.lineno) for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def arrows() -> list[tuple[str, str, str, int]]:
    """(importing file, its package key, imported package key, line) for every import between packages."""
    out = []
    for path in sorted(NAS.rglob("*.py")):
        src = key_of_file(path)
        for module, line in imports(path):
            dst = key_of_module(module)
            if dst is not None and dst != src:
                out.append((path.relative_to(REPO).as_posix(), src, dst, line))
    return out


def test_every_package_is_placed_in_the_documented_order():
    order = documented_order()
    assert len(order) == len(set(order)), f"listed twice: {sorted({p for p in order if order.count(p) > 1})}"
    present = {key_of_file(p) for p in NAS.rglob("*.py")}
    assert present - set(order) == set(), "packages under nas/ missing from docs/architecture.md's list"
    assert set(order) - present == set(), "docs/architecture.md lists packages that do not exist"


def test_no_import_runs_back_up_the_list():
    rank = {p: i for i, p in enumerate(documented_order())}
    upward = [f"{f}:{line} imports {dst} (above {src})" for f, src, dst, line in arrows()
              if rank[dst] < rank[src] and (f, dst) not in ALLOWED]
    assert upward == [], "\n".join(upward)


def test_every_allowed_exception_is_still_needed():
    """An exception nobody needs any more is removed, so that it cannot hide a new arrow."""
    rank = {p: i for i, p in enumerate(documented_order())}
    used = {(f, dst) for f, src, dst, _ in arrows() if rank[dst] < rank[src]}
    assert set(ALLOWED) - used == set()


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checker itself, on a module placed (by name) in nas.space: a function-level import of a
    higher package and a relative import are found; the script entry point's is not."""
    probe = tmp_path / "probe.py"
    probe.write_text("from . import codec\n\n\ndef f():\n    from nas.search import budgets\n\n\n"
                     "if __name__ == '__main__':\n    import nas.cli\n")
    found = [(key_of_module(m), line) for m, line in imports(probe, "nas.space.probe")]
    assert found == [("nas/space/", 1), ("nas/search/", 5)]
    rank = {p: i for i, p in enumerate(documented_order())}
    assert rank["nas/search/"] < rank["nas/space/"]  # so it is an upward arrow, which the test above refuses
