"""The package's layering: every import inside `stance/` (module-level or inside a function) points down."""
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stance"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")

# Layers, lowest first; a module may import only from its own layer or below (README, Architecture).
LAYERS = [
    {"errors", "labels", "progress", "quantize", "prevalence"},
    {"hardware", "io", "metrics", "textnorm", "folder", "tfidf", "e5convert", "hf_compat"},
    {"backbones", "config", "data", "engines", "runtime", "card", "check", "outputs", "crossfit", "blend"},
    {"onnx_runtime"},
    {"model"},
    {"scoring", "evaluation", "train", "fast_paths", "sampling", "annotate", "shards", "ray_scoring"},
    {"adapt", "crossfit_train"},
    {"reporting", "share_report"},
    {"cli"},
]
LAYER = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def internal_imports(module: str):
    """Names of `stance` modules that `module` imports anywhere in its body."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:                                   # from . import x
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("stance."):
            found.add(node.module.split(".")[1])
    return found & set(MODULES)


def test_every_module_has_a_layer():
    assert set(MODULES) == set(LAYER), set(MODULES) ^ set(LAYER)


@pytest.mark.parametrize("module", MODULES)
def test_imports_point_down(module):
    upward = {m for m in internal_imports(module) if LAYER[m] > LAYER[module]}
    assert not upward, f"{module} imports {upward} from a layer above it"


def test_no_import_cycle():
    graph = {m: internal_imports(m) - {m} for m in MODULES}
    state = {}

    def visit(m, path):
        if state.get(m) == "open":
            raise AssertionError("import cycle: " + " -> ".join(path + [m]))
        if state.get(m) == "done":
            return
        state[m] = "open"
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = "done"

    for m in MODULES:
        visit(m, [])


def test_each_module_imports_on_its_own_in_a_fresh_interpreter():
    """Any import order works: each module alone, then all of them in reverse order."""
    code = "; ".join(f"import stance.{m}" for m in reversed(MODULES))
    for snippet in [f"import stance.{m}" for m in MODULES] + [code]:
        r = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True)
        assert r.returncode == 0, f"{snippet}: {r.stderr[-500:]}"


def test_public_api():
    stance = importlib.import_module("stance")
    assert {"StanceClassifier", "classify", "LABELS", "__version__"} <= set(stance.__all__)
