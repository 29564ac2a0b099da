"""House rules that keep the layout readable, the app fast and the library pure: the direction of imports
(no cycles between modules or between packages), what store may see of fra_core, one error base, file sizes."""

import ast
import functools
import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fra_core", "store", "ui", "pages")
# what store may import of fra_core: the on-disk formats (and the error base they re-export)
STORE_MAY_SEE = {"fra_core.contracts", "fra_core.errors"}
# torch-free modules of contracts' own (the store reaches them only through contracts)
CONTRACTS_HELPERS = {"fra_core.coact_pack", "fra_core.pair_strengths"}


def _module_files() -> dict[str, Path]:
    mods = {"app": ROOT / "app.py"}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


MODULES = _module_files()


def _imported_names(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in the file (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` names the submodule pkg.mod; `from pkg import func`, the package
            names |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                      for a in node.names}
    return names


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


@functools.cache
def _graph() -> dict[str, set[str]]:
    """Project module → project modules it imports (edges into its own parent package's __init__ left out:
    a package re-exporting its submodules is not a cycle)."""
    graph = {}
    for mod, path in MODULES.items():
        targets = {_resolve(n) for n in _imported_names(path)} - {None, mod}
        graph[mod] = {t for t in targets if not mod.startswith(t + ".") and not t.startswith(mod + ".")}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_between_modules():
    assert _cycles(_graph()) == []


def test_top_level_packages_import_one_way():
    """app → pages → ui → (store, fra_core); store → fra_core.contracts only; fra_core imports none of them."""
    top = {}
    for mod, targets in _graph().items():
        for t in targets:
            a, b = mod.split(".")[0], t.split(".")[0]
            if a != b:
                top.setdefault(a, set()).add(b)
    assert _cycles(top) == [], top
    assert top.get("fra_core", set()) == set(), f"fra_core imports {top.get('fra_core')}"
    assert top.get("store", set()) <= {"fra_core"}


def test_store_sees_only_the_contracts_of_fra_core():
    seen = {t for mod, targets in _graph().items() if mod.split(".")[0] == "store"
            for t in targets if t.startswith("fra_core")}
    assert seen <= STORE_MAY_SEE, f"store imports {sorted(seen - STORE_MAY_SEE)} of fra_core"


def test_contracts_stay_torch_free_leaves():
    closure = STORE_MAY_SEE | CONTRACTS_HELPERS  # everything the store runs of fra_core
    for mod in closure:
        assert _graph()[mod] <= closure, mod
        assert not {n.split(".")[0] for n in _imported_names(MODULES[mod])} & {"torch", "duckdb", "streamlit"}


@pytest.mark.parametrize("package,forbidden", [
    ("fra_core", {"streamlit", "duckdb"}),
    ("store", {"torch", "transformer_lens", "sae_lens", "streamlit"}),
])
def test_import_direction(package, forbidden):
    offenders = {str(p.relative_to(ROOT)): sorted({n.split(".")[0] for n in _imported_names(p)} & forbidden)
                 for p in (ROOT / package).rglob("*.py")}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"{package} must not import {sorted(forbidden)}: {offenders}"


def test_pages_folder_holds_only_pages():
    """Every pages/*.py is routed by app.py (helpers live in ui/)."""
    app = (ROOT / "app.py").read_text(encoding="utf-8")
    files = sorted(p.name for p in (ROOT / "pages").glob("*.py"))
    assert files and all(f"pages/{name}" in app for name in files), files


def test_every_user_facing_error_derives_from_one_base():
    from fra_core.errors import FRAStudioError

    loose = []
    for pkg in ("fra_core", "store"):
        root = importlib.import_module(pkg)
        for info in pkgutil.walk_packages(root.__path__, pkg + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for name, obj in vars(module).items():
                if (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == info.name
                        and name != "JobCancelled" and not issubclass(obj, FRAStudioError)):
                    loose.append(f"{info.name}.{name}")
    assert loose == [], f"derive these from fra_core.errors.FRAStudioError: {loose}"


def test_file_sizes():
    too_long = {}
    for pattern, limit in (("pages/*.py", 250), ("ui/*.py", 400), ("fra_core/**/*.py", 400), ("store/*.py", 400)):
        for path in ROOT.glob(pattern):
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > limit:
                too_long[str(path.relative_to(ROOT))] = n
    assert not too_long, f"split these files: {too_long}"


def test_store_never_pulls_in_torch_even_indirectly():
    code = ("import store, sys; bad = [m for m in ('torch', 'transformer_lens', 'sae_lens') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_ruff_is_clean():
    ruff = Path(sys.executable).with_name("ruff")
    if not ruff.exists():
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"ruff is not installed next to {sys.executable} (requirements-dev.txt pins it)")
        pytest.skip("ruff is not installed in this environment (requirements-dev.txt installs it)")
    out = subprocess.run([str(ruff), "check", "."], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
