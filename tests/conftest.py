from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from expiryd.localcluster import LocalCluster

from .harness import Replica, write_config

# The command-line tools the tests call (hadolint, docker-compose, kubectl, kubernetes-validate) come
# from wheels installed beside this interpreter; its bin directory is not on PATH unless the
# virtualenv is activated, and a system-wide copy of one of them must not stand in for it.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


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
