"""A TLS-only Redis Cluster: the whole pipeline over rediss://, and a wrong CA refused clearly."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from expiryd.devtools.localcluster import LocalCluster, TlsFiles

from .certs import make_certificates
from .harness import expire_keys, wait_for_single_leader, wait_until
from .servers import standalone_servers


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_cluster(tls_files: TlsFiles) -> Iterator[LocalCluster]:
    with LocalCluster(tls=tls_files) as cluster:
        yield cluster


def tls_settings(files: TlsFiles) -> dict[str, str]:
    return {"ca_file": str(files.ca), "cert_file": str(files.cert), "key_file": str(files.key)}


def test_the_whole_pipeline_runs_over_tls_with_hostname_checks(tls_cluster, tls_files, config_for, spawn):
    stream = "{tls}:expired"
    routes = [
        {"match": "tls:log:*", "name": "log", "log": {}},
        {"match": "tls:stream:*", "name": "stream", "stream": {"name": stream}},
    ]
    config = config_for(tls_cluster, routes=routes, redis={"tls": tls_settings(tls_files)})
    replica = spawn("1", config)
    replica.wait_ready()
    wait_for_single_leader([replica])
    keys = [b"tls:log:1", b"tls:log:2", b"tls:stream:1"]
    expire_keys(tls_cluster, keys)

    wait_until(lambda: len(replica.events()) == 2, timeout=15, what="the log route's events")
    client = tls_cluster.client()
    wait_until(lambda: client.xlen(stream) == 1, timeout=15, what="the stream route's entry")
    client.close()
    assert replica.metric("expiryd_node_subscribed", node=tls_cluster.primaries()[0].address) == 1


def test_independent_masters_and_a_stream_on_another_server_run_over_tls(
    tls_cluster, tls_files, config_for, spawn, tmp_path: Path
):
    with (
        standalone_servers(3, tmp_path / "masters", tls=tls_files) as masters,
        standalone_servers(1, tmp_path / "target", tls=tls_files) as (target,),
    ):
        route = {
            "match": "tls:elsewhere:*",
            "name": "elsewhere",
            "stream": {"name": "expired", "url": f"{target.url}/0", "tls": tls_settings(tls_files)},
        }
        config = config_for(
            tls_cluster,
            routes=[route],
            redis={"tls": tls_settings(tls_files)},
            election={"masters": [m.url for m in masters]},
        )
        replica = spawn("1", config)
        replica.wait_ready()
        wait_for_single_leader([replica])
        keys = [b"tls:elsewhere:1", b"tls:elsewhere:2"]
        expire_keys(tls_cluster, keys)
        with target.client() as client:
            wait_until(lambda: client.xlen("expired") == len(keys), timeout=15, what="the stream entries")
        for master in masters:
            with master.client() as client:
                assert client.keys("redlock:*"), f"no lease on the master at {master.url}"


def test_a_server_certificate_from_another_ca_is_refused_with_a_clear_error(
    tls_cluster, config_for, spawn, tmp_path: Path
):
    stranger = make_certificates(tmp_path / "other-ca")
    config = config_for(tls_cluster, redis={"tls": {"ca_file": str(stranger.ca)}})
    replica = spawn("1", config)
    wait_until(
        lambda: replica.logged("cannot read the cluster topology"), timeout=30, what="the refused topology read logged"
    )
    (entry, *_) = replica.logged("cannot read the cluster topology")
    assert "certificate verify failed" in entry["reason"]
    assert not replica.events()
    check = subprocess.run(
        [sys.executable, "-m", "expiryd", "check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 2
    assert "certificate verify failed" in check.stderr
