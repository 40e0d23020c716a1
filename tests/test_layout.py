"""The package's layout: imports flow one way along the data flow, with no circles.

config -> data_handler -> inputs -> ms_facts -> plan -> check -> jobs_file -> image_sets ->
attempt -> quality -> joblog -> run_lock -> run_dir -> engines/ -> submit -> status_memo -> status -> report -> cli.
A module imports only modules to its left, and the helpers every stage may use (errors, files, hosts, commands, the WSClean option table).
Every import counts, those inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "imgpipe"
FLOW = ["config", "data_handler", "inputs", "ms_facts", "plan", "check", "jobs_file", "image_sets", "attempt", "quality",
        "joblog", "run_lock", "run_dir", "engines", "submit", "status_memo", "status", "report", "cli"]
HELPERS = {"__init__": 0, "errors": 0, "files": 0, "hosts": 0, "wsclean_options": 0, "wsclean_command": 1,
           "commands": 1}


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path) -> set[str]:
    """The imgpipe modules ``name`` imports (as dotted names under imgpipe)."""
    package = name.split(".")[:-1] if not name.endswith("__init__") else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                out.add(sub if sub in modules() or f"{sub}.__init__" in modules() else target)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            out |= {n[len("imgpipe."):] for n in names if n.startswith("imgpipe.")}
    return {o for o in out if o and o != name}


def stage(name: str) -> tuple[int, str]:
    top = name.split(".")[0]
    if top in HELPERS:
        return -10 + HELPERS[top], top
    return FLOW.index(top), top


def test_every_module_has_a_place_in_the_flow():
    for name in modules():
        top = name.split(".")[0]
        assert top in FLOW or top in HELPERS, f"imgpipe/{name}.py is in no stage: add it to FLOW or HELPERS"


def test_imports_flow_one_way():
    wrong = []
    for name, path in modules().items():
        here, top = stage(name)
        for target in imports_of(name, path):
            there, other = stage(target)
            if other != top and there >= here:
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_no_circles_within_a_stage():
    graph = {name: imports_of(name, path) for name, path in modules().items()}

    def visit(node, trail):
        if node in trail:
            raise AssertionError(f"import circle: {' -> '.join(trail[trail.index(node):] + [node])}")
        for nxt in graph.get(node, ()):
            if nxt in graph:
                visit(nxt, trail + [node])

    for name in graph:
        visit(name, [])
