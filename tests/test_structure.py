"""The package's shape: imports only go down (no cycles), the core imports without gradio,
the install metadata agrees with requirements.txt, and no development history leaks into the tree."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "seg"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the seg modules it imports anywhere in its body (deferred imports inside functions count)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets.add(stem)
                targets.update(f"{stem}.{alias.name}" for alias in node.names)
        edges = set()
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # importing a package's own submodule from its __init__ is not an edge back up
            if target and target != name and not name.startswith(target + "."):
                edges.add(target)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_anywhere_in_seg():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_only_the_ui_imports_gradio_and_nothing_below_imports_the_ui():
    graph = import_graph()
    for name, path in ((_module_name(p), p) for p in PACKAGE.rglob("*.py")):
        if name.startswith("seg.ui"):
            continue
        assert not any(t.startswith("seg.ui") for t in graph[name]), f"{name} imports the UI"
        assert not re.search(r"^\s*(import gradio|from gradio)", path.read_text(encoding="utf-8"), re.M), name


@pytest.mark.slow  # a fresh interpreter importing torch, torchvision and every core module: 9-12 s on 2 cores
def test_core_imports_without_gradio():
    core = sorted(n for n in import_graph() if not n.startswith("seg.ui"))
    code = (
        "import sys, importlib\n"
        "sys.modules['gradio'] = None  # any attempt to import it fails\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(" + repr(core) + "))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-3000:]


@pytest.mark.parametrize("given", [None, "300000"])
def test_importing_seg_shortens_openmps_spin_before_torch_loads_and_keeps_a_value_given(given):
    """libgomp reads GOMP_SPINCOUNT when torch loads: ``import seg`` must set it without importing torch."""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    if given is not None:
        env["GOMP_SPINCOUNT"] = given
    code = "import os, sys, seg; print(os.environ['GOMP_SPINCOUNT'], 'torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [given or "20000", "False"]


def _requirement_name(line: str) -> str:
    return re.split(r"[<>=!~\[ ;]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_requirements_txt_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        declared.extend(extra)
    lines = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    listed = [line for line in lines if line]
    norm = lambda reqs: {_requirement_name(r): r.replace(" ", "").lower() for r in reqs}  # noqa: E731
    assert norm(listed) == norm(declared)


def test_every_package_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    packages = {_module_name(p.parent / "__init__.py") for p in PACKAGE.rglob("__init__.py")}
    assert packages <= set(config["packages"])
    assert config["package-dir"]["seglab_checkpoints"] == "checkpoints"
    # every shipped file (weights, cards, int8 parameters) is package data of ``seglab_checkpoints``
    globs = config["package-data"]["seglab_checkpoints"]
    shipped = [p.relative_to(ROOT / "checkpoints") for p in (ROOT / "checkpoints").rglob("*") if p.is_file()]
    packaged = lambda path: any(path.match(g) and len(path.parts) == len(Path(g).parts) for g in globs)  # noqa: E731
    assert shipped and all(packaged(path) for path in shipped), [str(p) for p in shipped if not packaged(p)]


#: Spelled with \s+ between words, so that this file can be scanned like every other one.
HISTORY = re.compile(
    r"\b(session\s+[1-9]|issue\s+[1-9]\d*|as\s+the\s+issue\s+asks|this\s+machine|the\s+machines\s+that\s+built)\b",
    re.IGNORECASE,
)


@pytest.mark.parametrize("suffix", [".py", ".md", ".toml", ".json", ".css", ".sh", ".txt", ".cfg", ".yaml"])
def test_no_development_history_in_the_tree(suffix):
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    hits = []
    for rel in tracked:
        path = ROOT / rel
        if path.suffix != suffix or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="ignore").splitlines(), 1):
            if HISTORY.search(line):
                hits.append(f"{rel}:{number}: {line.strip()[:100]}")
    assert not hits, "\n".join(hits)


def test_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "```python" in readme and "pip install -r requirements.txt" in readme and "python app.py" in readme
    assert not (ROOT / "docs" / "UI_NEEDS.md").exists()
