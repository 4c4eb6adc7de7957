from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from expiryd.devtools.localcluster import SERVERS, LocalCluster

from .harness import Replica, write_config

# The command-line tools the tests call (hadolint, docker-compose, kubectl, kubernetes-validate) come
# from wheels installed beside this interpreter; its bin directory is not on PATH unless the
# virtualenv is activated, and a system-wide copy of one of them must not stand in for it.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


# Fixtures that start servers or expiryd processes. A test that takes none of them runs in process:
# `make test-fast` (pytest -m "not cluster") runs only those, in seconds.
_CLUSTER_FIXTURES = frozenset(
    {
        "shared_cluster",
        "shared_valkey_cluster",
        "patient_cluster",
        "shared_cluster_each_server",
        "cluster_each_server",
        "cluster",
        "spawn",
        "crowded",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[LocalCluster]:
    """One cluster for tests that do not hurt it; each test uses its own lock and keys."""
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def patient_cluster() -> Iterator[LocalCluster]:
    """A cluster slow to fail over, so a node restarted or frozen for seconds stays a primary.

    Shared by the tests that hurt a node this way: each leaves every node running and the cluster healthy.
    """
    with LocalCluster(node_timeout_ms=60_000) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def shared_valkey_cluster() -> Iterator[LocalCluster]:
    """The Valkey twin of ``shared_cluster``, started only if a test runs on Valkey."""
    with LocalCluster(server="valkey") as cluster:
        yield cluster


@pytest.fixture(params=SERVERS)
def shared_cluster_each_server(request: pytest.FixtureRequest) -> LocalCluster:
    """``shared_cluster`` on Redis, then the same test again on Valkey: for the tests that matter on both.

    Only a chosen set of tests takes this fixture; the rest of the suite runs on Redis alone, which
    keeps a second server from doubling the suite's time.
    """
    name = "shared_cluster" if request.param == "redis" else "shared_valkey_cluster"
    cluster: LocalCluster = request.getfixturevalue(name)
    return cluster


@pytest.fixture(params=SERVERS)
def cluster_each_server(request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    """A cluster of this test's own on each server in turn, for the fault tests that matter on both."""
    with LocalCluster(server=request.param) as cluster:
        yield cluster


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """A cluster of this test's own, for tests that kill, freeze or fail over its nodes."""
    with LocalCluster() as cluster:
        yield cluster


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report ends with what each of its replicas logged: a failure in CI is read from there."""
    report = yield
    if report.failed:
        for replica in item.stash.get(_REPLICAS, []):
            report.sections.append(
                (f"replica {replica.name} log (last {_LOG_TAIL} lines)", replica.log_tail(_LOG_TAIL))
            )
    return report


_REPLICAS = pytest.StashKey[list[Replica]]()
_LOG_TAIL = 60


@pytest.fixture
def spawn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Start replicas of expiryd; every one is killed when the test ends."""
    started: list[Replica] = []
    request.node.stash[_REPLICAS] = started

    def start(name: str, config: Path, **kwargs: Any) -> Replica:
        replica = Replica(name, config, tmp_path, **kwargs)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.close()


@pytest.fixture
def config_for(tmp_path: Path) -> Callable[..., Path]:
    def make(cluster: LocalCluster, **overrides: Any) -> Path:
        return write_config(tmp_path, cluster, **overrides)

    return make
