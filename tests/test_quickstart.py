"""The README's quick start, run as it stands: every command in it works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from expiryd.devtools.localcluster import free_ports

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).parent.parent


def quick_start() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


def test_the_readme_quick_start_runs_as_it_stands(tmp_path):
    script = quick_start()
    # The same script on free ports, so that it runs beside anything else on this machine.
    cluster_port, listen_port = free_ports(1)[0], free_ports(1)[0] + 1
    script = script.replace("--port 7000", f"--port {cluster_port}").replace("-p 7000", f"-p {cluster_port}")
    script = script.replace("127.0.0.1:9102", f"127.0.0.1:{listen_port}")
    script = script.replace(
        "expiryd --id 1 --config expiryd.yaml",
        f"expiryd --id 1 --config expiryd.yaml --listen 127.0.0.1:{listen_port + 1}",
    )
    script = script.replace(
        ". .venv/bin/activate", f". {ROOT}/.venv/bin/activate" if (ROOT / ".venv").exists() else "true"
    )
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        ["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=environment
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"key": "order:42"' in result.stdout
    leaders = re.findall(r"^leader    (\d) \(term (\d+)\)$", result.stdout, re.MULTILINE)
    assert [replica for replica, _ in leaders] == ["1", "2"], result.stdout
    assert int(leaders[1][1]) > int(leaders[0][1])
