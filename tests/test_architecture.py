"""House rules that keep the app fast and the library pure: the direction of imports, file sizes."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package,forbidden", [
    ("fra_core", {"streamlit", "duckdb"}),
    ("store", {"torch", "transformer_lens", "sae_lens"}),
])
def test_import_direction(package, forbidden):
    offenders = {str(p.relative_to(ROOT)): sorted(_imports(p) & forbidden)
                 for p in (ROOT / package).rglob("*.py") if _imports(p) & forbidden}
    assert not offenders, f"{package} must not import {sorted(forbidden)}: {offenders}"


def test_file_sizes():
    too_long = {}
    for pattern, limit in (("pages/*.py", 250), ("fra_core/**/*.py", 400), ("store/*.py", 400)):
        for path in ROOT.glob(pattern):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > limit:
                too_long[str(path.relative_to(ROOT))] = n
    assert not too_long, f"split these files: {too_long}"


def test_store_never_pulls_in_torch_even_indirectly():
    code = "import store, sys; bad = [m for m in ('torch', 'transformer_lens', 'sae_lens') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
