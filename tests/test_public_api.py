"""What ``import expiryd`` offers a handler's author, and what it costs."""

from __future__ import annotations

import json
import subprocess
import sys

import expiryd
import expiryd.errors
import expiryd.events
import expiryd.handlers

HEAVY = ("yaml", "redis", "httpx", "pottery")


def loaded_client_libraries(statement: str) -> list[str]:
    """Which of yaml, redis, httpx and pottery a fresh interpreter has loaded after ``statement``."""
    check = f"{statement}; import json, sys; print(json.dumps(sorted({set(HEAVY)!r} & set(sys.modules))))"
    result = subprocess.run([sys.executable, "-c", check], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    names: list[str] = json.loads(result.stdout)
    return names


def test_the_package_exports_the_handler_api_and_its_version() -> None:
    assert expiryd.Event is expiryd.events.Event
    assert expiryd.Expiration is expiryd.events.Expiration
    assert expiryd.PermanentFailure is expiryd.handlers.PermanentFailure is expiryd.errors.PermanentFailure
    assert expiryd.RetryLater is expiryd.handlers.RetryLater is expiryd.errors.RetryLater
    assert expiryd.ConfigError is expiryd.errors.ConfigError
    assert expiryd.ExpirydError is expiryd.errors.ExpirydError
    assert isinstance(expiryd.__version__, str)
    assert all(hasattr(expiryd, name) for name in expiryd.__all__)


def test_importing_the_errors_loads_no_client_library() -> None:
    assert loaded_client_libraries("import expiryd.errors") == []


def test_importing_the_handler_api_loads_no_client_library() -> None:
    statement = "import expiryd; from expiryd import Event, PermanentFailure, RetryLater"
    assert loaded_client_libraries(statement) == []


def test_the_writing_side_of_a_payload_route_is_public_and_loaded_only_when_asked_for() -> None:
    import expiryd.companions

    assert expiryd.Companions is expiryd.companions.Companions
    assert loaded_client_libraries("import expiryd") == []
    assert "redis" in loaded_client_libraries("from expiryd import Companions")


def test_the_writing_side_of_a_payload_route_loads_redis_alone() -> None:
    assert loaded_client_libraries("from expiryd import Companions") == ["redis"]


def test_a_running_replica_loads_none_of_the_development_tools() -> None:
    check = "import expiryd.cli, sys; print(sorted(m for m in sys.modules if m.startswith('expiryd.devtools')))"
    result = subprocess.run([sys.executable, "-c", check], check=True, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]"


def test_the_demo_offers_every_server_the_local_cluster_runs() -> None:
    from expiryd.cli import DEMO_SERVERS
    from expiryd.devtools.localcluster import SERVERS

    assert DEMO_SERVERS == SERVERS
