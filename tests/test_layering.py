"""The packages' layering, read from every module's import statements (ast, function-level imports
included): shiftpq (sw/) < shiftpq_hw (hw/) < shiftpq_sim (sim/) < shiftpq_cli (cli/, the command
line). A package imports only the packages below it; shiftpq imports no hardware tool either (the
bare GPU machine trains with PyTorch, NumPy and tqdm only: ``python -m shiftpq.sweep``,
scripts/gpu_round.py). docs/architecture.md, "Packages and CLI"."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bottom to top: (package, its directory)
LAYERS = [("shiftpq", "sw"), ("shiftpq_hw", "hw"), ("shiftpq_sim", "sim"), ("shiftpq_cli", "cli")]
HARDWARE_TOOLS = {"amaranth", "cocotb"}
# scripts that run on the bare GPU machine with only sw/ on their path
BARE_SCRIPTS = ["scripts/gpu_round.py"]


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in ``path``; relative imports stay inside
    their own package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.append((node.lineno, node.module.split(".")[0]))
    return sorted(found)


def violations(root: Path = ROOT) -> list[str]:
    """``file:line: imports X`` for every import of a package at or above the importer's layer (other
    than its own), of a hardware tool from shiftpq, and of anything but shiftpq from a bare script."""
    names = [name for name, _ in LAYERS]
    bad = []
    for level, (package, folder) in enumerate(LAYERS):
        forbidden = set(names[level + 1:]) | (HARDWARE_TOOLS if package == "shiftpq" else set())
        for path in sorted((root / folder / package).rglob("*.py")):
            bad += [f"{path.relative_to(root)}:{line}: imports {mod}" for line, mod in imports(path) if mod in forbidden]
    for script in BARE_SCRIPTS:
        path = root / script
        if path.exists():
            bad += [f"{script}:{line}: imports {mod}" for line, mod in imports(path)
                    if mod in set(names[1:]) | HARDWARE_TOOLS]
    return bad


def test_no_package_imports_one_above_it():
    assert violations() == []


def test_a_violation_is_caught(tmp_path):
    """The check itself: an upward import at module level, inside a function, as ``import a.b`` and
    from a bare script is each named with its file and line; downward and relative imports are not."""
    def write(rel: str, text: str):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    write("sw/shiftpq/ok.py", "from . import levels\nimport numpy\n")
    write("sw/shiftpq/bad.py", "import shiftpq_hw.gen\n\ndef f():\n    from shiftpq_cli import main\n    import amaranth\n")
    write("hw/shiftpq_hw/bad.py", "from shiftpq.tables import Tables\nfrom shiftpq_sim import runner\n")
    write("sim/shiftpq_sim/ok.py", "from shiftpq_hw.gen import TOP\n")
    write("cli/shiftpq_cli/ok.py", "from shiftpq_sim.runner import fuzz\nimport shiftpq_hw\n")
    write("scripts/gpu_round.py", "from shiftpq.sweep import sweep\nfrom shiftpq_cli import run\n")
    assert violations(tmp_path) == [
        "sw/shiftpq/bad.py:1: imports shiftpq_hw", "sw/shiftpq/bad.py:4: imports shiftpq_cli",
        "sw/shiftpq/bad.py:5: imports amaranth", "hw/shiftpq_hw/bad.py:2: imports shiftpq_sim",
        "scripts/gpu_round.py:2: imports shiftpq_cli"]
