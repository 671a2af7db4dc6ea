"""The package layout is the architecture: read every import (ast, nothing runs) and check the layers."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from adavit.__main__ import COMMANDS

PACKAGE = Path(__file__).resolve().parents[1] / "adavit"
# each subpackage may import only from itself and those before it
LAYERS = ("core", "weights", "data", "export", "measure", "train", "app")


def imported(path: Path, package: tuple[str, ...] | None = None) -> set[str]:
    """Absolute names of everything a module imports (relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), str(path))
    package = list(package or ("adavit", *path.relative_to(PACKAGE).parent.parts))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            if node.module is None or node.level:  # `from .. import data` imports the subpackage data
                names.update(f"{module}.{a.name}" for a in node.names)
    return names


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "adavit" and len(parts) > 1 and parts[1] in LAYERS else None


def violations(path: Path, layer: str, names: set[str]) -> list[str]:
    out = []
    allowed = LAYERS[: LAYERS.index(layer) + 1]
    for name in sorted(names):
        target = layer_of(name)
        if target is not None and target not in allowed:
            out.append(f"{path.name} ({layer}) imports {name} ({target})")
        if name.split(".")[0] == "gradio" and layer != "app":
            out.append(f"{path.name} ({layer}) imports gradio; only adavit/app may")
    return out


def test_top_level_holds_only_the_entry_points_and_the_layers():
    entries = {p.name for p in PACKAGE.iterdir() if not p.name.startswith((".", "__pycache__"))}
    assert entries == {"__init__.py", "__main__.py", *LAYERS}


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_before_it(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files, f"adavit/{layer} is empty"
    problems = [v for f in files for v in violations(f, layer, imported(f))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_says_what_it_holds_and_what_it_may_import(layer):
    doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
    assert doc and len(doc.splitlines()) >= 2
    assert ("imports nothing" in doc.lower()) if layer == "core" else ("may import" in doc.lower())


def test_the_checker_catches_a_core_module_that_imports_upwards_or_gradio(tmp_path):
    # the rule must be able to fail: relative, absolute and lazy imports of a higher layer, and gradio
    src = tmp_path / "probe.py"
    src.write_text("from ..measure import flops\nfrom .. import app\nfrom .config import PATCH\nimport torch\n"
                   "def f():\n    import gradio\n    from adavit.train.recipe import main\n")
    found = violations(src, "core", imported(src, ("adavit", "core")))
    assert found == ["probe.py (core) imports adavit.app (app)", "probe.py (core) imports adavit.measure (measure)",
                     "probe.py (core) imports adavit.measure.flops (measure)",
                     "probe.py (core) imports adavit.train.recipe (train)",
                     "probe.py (core) imports gradio; only adavit/app may"]
    assert violations(src, "app", imported(src, ("adavit", "app"))) == []


def test_relative_imports_resolve_to_their_subpackage():
    names = imported(PACKAGE / "measure" / "evaluate.py")
    assert "adavit.weights.checkpoint" in names and "adavit.data" in names and "adavit.core.config" in names
    assert {layer_of(n) for n in names} - {None} <= {"core", "weights", "data", "measure"}


def test_one_command_line_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "adavit", "--help"], capture_output=True, text=True, check=True)
    for name in COMMANDS:
        assert f"  {name} " in out.stdout
    bad = subprocess.run([sys.executable, "-m", "adavit", "nonsense"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command 'nonsense'" in bad.stderr


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_answers_help_with_its_own_name(name):
    out = subprocess.run([sys.executable, "-m", "adavit", name, "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: adavit {name}")
