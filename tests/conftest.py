from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from expiryd.localcluster import LocalCluster

from .harness import Replica, write_config


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[LocalCluster]:
    """One cluster for tests that do not hurt it; each test uses its own lock and keys."""
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    """A cluster of this test's own, for tests that kill, freeze or fail over its nodes."""
    with LocalCluster() as cluster:
        yield cluster


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Start replicas of expiryd; every one is killed when the test ends."""
    started: list[Replica] = []

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
