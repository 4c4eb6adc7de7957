"""The package type-checks: hints are part of the code, and a wrong one is a bug."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_package_passes_mypy():
    root = Path(__file__).parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "expiryd"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
