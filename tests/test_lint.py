"""Static checks: pyflakes' rules over every Python file in the repository (config in pyproject.toml)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="needs ruff (test extra)")
def test_pyflakes_finds_nothing():
    result = subprocess.run(["ruff", "check", "--no-cache", "hmsa_jax", "tests", "benchmarks", "configs"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
