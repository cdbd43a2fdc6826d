"""Static checks: pyflakes' rules over every Python file in the repository (config in pyproject.toml)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# ruff is in the test extra; it is looked up in this interpreter's environment (not on PATH), so
# `.venv/bin/python -m pytest` without an activated venv still runs the check.
@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="needs ruff (test extra)")
def test_pyflakes_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache",
                             "hmsa_jax", "tests", "benchmarks", "configs"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
