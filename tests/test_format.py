"""One formatter for the whole tree: ruff format, with the project's settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_tree_is_formatted_with_ruff():
    root = Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "expiryd", "tests", "bench", "examples"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
