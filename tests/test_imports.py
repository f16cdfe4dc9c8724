"""The import contract (docs/decisions.md): the folders are the pipeline, and the cheap layers stay cheap.

``lint-imports`` checks the layers and the NeMo ban declared in pyproject.toml; what it cannot see is
checked here: ``kdstore.cli`` (installed from cli/, outside the folder it walks) and imports of torch
at module level (import-linter also counts imports inside functions, which are allowed).
"""

from __future__ import annotations

import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kdstore

ROOT = Path(__file__).resolve().parent.parent
NO_TORCH_AT_IMPORT = ("kdstore.store", "kdstore.inputs", "kdstore.runtime")
TORCH_ALLOWED = {"kdstore.inputs.batches"}  # the one torch Dataset every stage shares (decisions.md)


def _modules(package: str) -> list[str]:
    module = __import__(package, fromlist=["_"])
    return [package] + [m.name for m in pkgutil.walk_packages(module.__path__, package + ".")]


def test_import_contracts_hold():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run([lint, str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout


def test_nothing_in_the_library_imports_the_cli():
    """(The demo may start ``python -m kdstore.cli.main`` subprocesses; it never imports the CLI.)"""
    imports_cli = re.compile(r"^\s*(from|import)\s+kdstore\.cli\b", re.MULTILINE)
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "kdstore").rglob("*.py")
                 if imports_cli.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


@pytest.mark.parametrize("package", NO_TORCH_AT_IMPORT)
def test_cheap_packages_import_without_torch_or_nemo(package):
    names = [m for m in _modules(package) if m not in TORCH_ALLOWED]
    code = (f"import sys\nfor name in {names!r}: __import__(name)\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'nemo', 'lightning'})\n"
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{package} imports {result.stdout.strip()} at import time"


def test_every_module_imports():
    """A moved module with a stale import fails here, not in the one slow test that happens to use it."""
    names = [m for m in _modules("kdstore") if not m.startswith("kdstore.cli")]
    code = f"for name in {names!r}: __import__(name)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert kdstore.__version__
