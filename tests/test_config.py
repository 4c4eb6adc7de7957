"""Configuration: precedence, durations, secrets, and one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from expiryd.config import ConfigError, load_config, parse_duration, parse_size, takeover_gap

MINIMAL = """
redis:
  nodes: ["redis://127.0.0.1:7000"]
routes:
  - match: "order:*"
    log: {}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "expiryd.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "expiryd", *args], capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("5s", 5.0), ("1m", 60.0), ("2", 2.0), ("1.5s", 1.5)])
def test_durations_accept_milliseconds_seconds_and_minutes(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("512KB", 512 * 1024), ("64MB", 64 << 20), ("1GB", 1 << 30), ("100", 100)])
def test_sizes_accept_kilobytes_megabytes_gigabytes_and_bare_bytes(text, size):
    assert parse_size(text) == size


def test_minimal_config_gets_documented_defaults(tmp_path):
    config = load_config(path=write(tmp_path, MINIMAL), environ={})
    assert config.replay.warmup == 8.0
    assert config.replay.window == 15.0
    assert config.election.lease == 5.0
    assert config.election.renew_interval == 1.0
    assert config.election.renew_deadline == 3.0
    assert config.election.retry_interval == 0.5
    assert config.http.listen == "127.0.0.1:9101"
    assert config.redis.ensure_notifications is True
    assert config.routes[0].label == "order:*"


def test_webhook_and_stream_routes_get_their_handlers_defaults_unless_they_set_their_own(tmp_path):
    text = """
redis:
  nodes: ["redis://127.0.0.1:7000"]
routes:
  - match: "a:*"
    log: {}
  - match: "b:*"
    webhook: {url: "http://127.0.0.1:8080/expired"}
  - match: "c:*"
    stream: {name: "expired:c"}
  - match: "d:*"
    concurrency: 1
    batch: {max_wait: 10ms}
    stream: {name: "expired:d"}
"""
    config = load_config(path=write(tmp_path, text), environ={})
    settings = [(route.concurrency, route.batch.size, route.batch.max_wait) for route in config.routes]
    assert settings == [(1, 100, 0.0), (2, 500, 0.0), (4, 500, 0.0), (1, 500, 0.01)]


def test_environment_overrides_file_and_flags_override_environment(tmp_path):
    path = write(tmp_path, MINIMAL + "election:\n  lease: 8s\nhttp:\n  listen: 127.0.0.1:9000\n")
    environ = {"EXPIRYD_ELECTION_LEASE": "10s", "EXPIRYD_LISTEN": "127.0.0.1:9001", "EXPIRYD_ID": "pod-a"}
    config = load_config(path=path, environ=environ, overrides={"listen": "127.0.0.1:9002", "id": None})
    assert config.election.lease == 10.0
    assert config.replay.warmup > 10.0  # derived from the longer lease
    assert config.http.listen == "127.0.0.1:9002"
    assert config.id == "pod-a"


def test_environment_lists_are_comma_separated(tmp_path):
    environ = {"EXPIRYD_REDIS_NODES": "redis://10.0.0.1:6379, redis://10.0.0.2:6379"}
    config = load_config(path=write(tmp_path, "routes: [{match: '*', log: {}}]"), environ=environ)
    assert config.redis.nodes == ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]


def test_password_comes_from_environment_or_file_and_is_not_shown(tmp_path):
    secret = tmp_path / "password"
    secret.write_text("s3cret\n", encoding="utf-8")
    config = load_config(path=write(tmp_path, MINIMAL), environ={"EXPIRYD_REDIS_PASSWORD_FILE": str(secret)})
    assert config.redis.password == "s3cret"
    assert "s3cret" not in repr(config)
    assert load_config(path=write(tmp_path, MINIMAL), environ={"EXPIRYD_REDIS_PASSWORD": "x"}).redis.password == "x"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (MINIMAL + "bogus: 1\n", "bogus", "unknown key"),
        (MINIMAL.replace('["redis://127.0.0.1:7000"]', "[7000]"), "redis.nodes[0]", "expected a string"),
        (MINIMAL + "election:\n  lease: soon\n", "election.lease", "expected a duration"),
        (MINIMAL + "election:\n  renew_deadline: 6s\n", "election.renew_deadline", "shorter than election.lease"),
        (MINIMAL + "redis_password: x\n", "redis_password", "unknown key"),
        (MINIMAL.replace("nodes:", "password: x\n  nodes:"), "redis.password", "EXPIRYD_REDIS_PASSWORD"),
        (MINIMAL.replace("redis://127.0.0.1", "redis://:pw@127.0.0.1"), "redis.nodes[0]", "holds a password"),
        (
            MINIMAL.replace("redis://127.0.0.1", "rediss://127.0.0.1").replace(
                "redis:\n", "redis:\n  tls: {ca_file: /nonexistent/ca.pem}\n"
            ),
            "redis.tls.ca_file",
            "no such file",
        ),
        (MINIMAL + "election:\n  masters: ['rediss://10.0.0.1:6379']\n", "redis.nodes", "mixes redis:// and rediss://"),
        (MINIMAL.replace("    log: {}\n", ""), "routes[0]", "exactly one handler"),
        (MINIMAL + "pipeline:\n  queue_size: many\n", "pipeline.queue_size", "whole number"),
        (MINIMAL.replace("log: {}", "log: {}\n    payload: '{id}:data'"), "routes[0].payload", "must contain {key}"),
        (MINIMAL.replace("log: {}", "python: 'no_such_module:handle'"), "routes[0].python", "cannot import"),
        (MINIMAL.replace("log: {}", "python: 'expiryd.config'"), "routes[0].python", "package.module:function"),
        (MINIMAL.replace("log: {}", "webhook: {url: 'ftp://host/x'}"), "routes[0].webhook.url", "http:// or https://"),
        (
            MINIMAL.replace("log: {}", "webhook: {url: 'http://h/x', secret_env: NOPE}"),
            "routes[0].webhook.secret_env",
            "NOPE is not set",
        ),
        (MINIMAL.replace("log: {}", "log: {}\n    batch: {size: 0}"), "routes[0].batch.size", "at least 1"),
        (
            MINIMAL.replace("log: {}", "log: {}\n    batch: {max_wait: -1s}"),
            "routes[0].batch.max_wait",
            "expected a duration",
        ),
        (
            MINIMAL.replace("log: {}", "stream: {name: s, url: 'redis://:pw@h:1'}"),
            "routes[0].stream.url",
            "holds a password",
        ),
        (
            MINIMAL.replace("log: {}", "stream: {name: s, url: 'rediss://h:1', tls: {cert_file: /c.pem}}"),
            "routes[0].stream.tls.cert_file",
            "needs both cert_file and key_file",
        ),
        (
            MINIMAL.replace("log: {}", "log: {}\n    events: [expired, hexpird]"),
            "routes[0].events[1]",
            "expected expired or hexpired, got 'hexpird'",
        ),
        (MINIMAL.replace("log: {}", "log: {}\n    events: []"), "routes[0].events", "needs at least one of"),
        (MINIMAL.replace("log: {}", "log: {}\n    events: expired"), "routes[0].events", "expected a list"),
        (
            MINIMAL.replace("log: {}", "log: {}\n    events: [hexpired, hexpired]"),
            "routes[0].events",
            "lists the same event twice",
        ),
        (MINIMAL + "sweep:\n  scan_rate: 0\n", "sweep.scan_rate", "must be positive"),
        (MINIMAL + "sweep:\n  count: 0\n", "sweep.count", "must be positive"),
        (MINIMAL + "replay:\n  max_bytes: 64 apples\n", "replay.max_bytes", "expected a size like 512KB"),
        (MINIMAL + "replay:\n  max_bytes: 0\n", "replay.max_bytes", "must be greater than zero"),
    ],
)
def test_bad_config_names_file_key_and_problem(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path=path, environ={})
    assert caught.value.source == path
    assert caught.value.key == key
    assert problem in caught.value.problem


@pytest.mark.parametrize(
    ("setting", "consequence"),
    [
        ("warmup", "a replica that joined after the last leader's final record could take over"),
        ("window", "events expiring while nobody leads leave the buffer before they are replayed"),
    ],
)
def test_replay_timings_shorter_than_the_takeover_gap_are_refused_with_the_gap_spelled_out(
    tmp_path, setting, consequence
):
    with pytest.raises(ConfigError) as caught:
        load_config(path=write(tmp_path, MINIMAL + f"replay:\n  {setting}: 6s\n"), environ={})
    assert caught.value.key == f"replay.{setting}"
    assert caught.value.problem == (
        f"must be longer than the takeover gap, lease + 1.2 x retry_interval + renew_interval (6.6s), or {consequence}"
    )


def test_derived_replay_timings_follow_the_election_timings(tmp_path):
    config = load_config(path=write(tmp_path, MINIMAL + "election:\n  lease: 10s\n"), environ={})
    assert takeover_gap(config.election) == 11.6
    assert (config.replay.warmup, config.replay.window) == (13.0, 25.0)


def test_a_signed_webhook_over_plain_http_off_this_host_is_refused_unless_allowed(tmp_path):
    (tmp_path / "secret").write_text("s3cret")
    webhook = f"webhook: {{url: 'http://hooks.example.com/x', secret_file: '{tmp_path / 'secret'}'}}"
    with pytest.raises(ConfigError) as caught:
        load_config(path=write(tmp_path, MINIMAL.replace("log: {}", webhook)), environ={})
    assert caught.value.key == "routes[0].webhook.url"
    assert "use https, or set allow_insecure" in caught.value.problem
    allowed = webhook.replace("secret_file", "allow_insecure: true, secret_file")
    assert load_config(path=write(tmp_path, MINIMAL.replace("log: {}", allowed)), environ={}).routes[0].webhook
    loopback = webhook.replace("hooks.example.com", "127.0.0.1")
    assert load_config(path=write(tmp_path, MINIMAL.replace("log: {}", loopback)), environ={}).routes[0].webhook


def test_webhook_secret_and_stream_password_come_from_environment_or_file(tmp_path):
    (tmp_path / "password").write_text("p4ss\n")
    routes = MINIMAL.replace("log: {}", "webhook: {url: 'https://h/x', secret_env: HOOK_SECRET}") + (
        f"  - match: 'x'\n    stream: {{name: s, url: 'redis://h:1', password_file: '{tmp_path / 'password'}'}}\n"
    )
    config = load_config(path=write(tmp_path, routes), environ={"HOOK_SECRET": "s3cret"})
    webhook, stream = config.routes[0].webhook, config.routes[1].stream
    assert webhook is not None and stream is not None
    assert (webhook.secret, stream.password) == ("s3cret", "p4ss")
    assert "s3cret" not in repr(config) and "p4ss" not in repr(config)


def test_bad_environment_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(path=write(tmp_path, MINIMAL), environ={"EXPIRYD_ELECTION_LEASE": "forever"})
    assert str(caught.value).startswith("environment: EXPIRYD_ELECTION_LEASE: expected a duration")


def test_cli_exits_2_with_one_line_and_no_traceback(tmp_path):
    path = write(tmp_path, MINIMAL + "election:\n  lease: soon\n")
    result = run_cli("--config", path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"expiryd: config error: {path}: election.lease: expected a duration like 500ms, 5s or 1m, got 'soon'"
    ]
    assert "Traceback" not in result.stderr


def test_cli_exits_2_naming_the_route_event_that_is_not_known(tmp_path):
    path = write(tmp_path, MINIMAL.replace("log: {}", "log: {}\n    events: [expired, evicted]"))
    result = run_cli("--config", path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"expiryd: config error: {path}: routes[0].events[1]: expected expired or hexpired, got 'evicted'"
    ]


def test_routes_take_expired_events_unless_they_list_others(tmp_path):
    text = MINIMAL + '  - match: "cart:*"\n    events: [hexpired, expired]\n    log: {}\n'
    config = load_config(path=write(tmp_path, text), environ={})
    assert [route.events for route in config.routes] == [["expired"], ["hexpired", "expired"]]


def test_cli_reports_a_missing_file_the_same_way(tmp_path):
    result = run_cli("check", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "absent.yaml: (file): cannot read" in result.stderr


@pytest.mark.cluster
def test_check_exits_2_when_no_seed_is_reachable(tmp_path):
    from .harness import free_port

    path = write(tmp_path, MINIMAL.replace("7000", str(free_port())))
    result = run_cli("check", "--config", path)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert f"{path}: redis.nodes: cannot reach any seed node" in result.stderr


def test_check_prints_topology_and_notification_status(shared_cluster, tmp_path):
    text = MINIMAL.replace('["redis://127.0.0.1:7000"]', f'["{shared_cluster.seed_urls[0]}"]')
    result = run_cli("check", "--config", write(tmp_path, text))
    assert result.returncode == 0, result.stdout + result.stderr
    primaries = [line for line in result.stdout.splitlines() if line.startswith("primary")]
    assert len(primaries) == 3
    assert "state ok, 3 primaries, 3 replicas" in result.stdout
    assert result.stdout.splitlines()[-1] == "result   ok"


def test_check_fails_when_notifications_are_off_and_may_not_be_repaired(cluster, tmp_path):
    text = MINIMAL.replace('["redis://127.0.0.1:7000"]', f'["{cluster.seed_urls[0]}"]')
    text = text.replace("redis:\n", "redis:\n  ensure_notifications: false\n")
    result = run_cli("check", "--config", write(tmp_path, text))
    assert result.returncode == 1
    assert result.stdout.count("lacks Ex and redis.ensure_notifications is off") == 3
    for node in cluster.primaries():
        assert node.client().config_get("notify-keyspace-events")["notify-keyspace-events"] == ""


def test_example_config_shows_every_option_with_its_default(tmp_path):
    import dataclasses

    from expiryd.config import BatchConfig, RetryConfig, RouteConfig, StreamConfig, TlsConfig, WebhookConfig

    example = Path(__file__).parent.parent / "deploy" / "expiryd.example.yaml"
    config = load_config(path=str(example), environ={})
    defaults = load_config(path=write(tmp_path, MINIMAL), environ={})
    for section in ("redis", "election", "pipeline", "replay", "http", "log", "schedule", "sweep"):
        loaded, default = getattr(config, section), getattr(defaults, section)
        for setting in dataclasses.fields(default):
            if setting.metadata.get("secret") or (section, setting.name) == ("redis", "nodes"):
                continue
            assert getattr(loaded, setting.name) == getattr(default, setting.name), f"{section}.{setting.name}"
    text = example.read_text()
    first_route = config.routes[0]
    assert dataclasses.replace(first_route, name=None, log=None) == RouteConfig(match=first_route.match)
    for section_type in (
        type(defaults.redis),
        type(defaults.election),
        type(defaults.pipeline),
        type(defaults.replay),
        type(defaults.dead_letter),
        type(defaults.sweep),
        RouteConfig,
        BatchConfig,
        RetryConfig,
        WebhookConfig,
        StreamConfig,
        TlsConfig,
        type(defaults.http),
    ):
        for setting in dataclasses.fields(section_type):
            if not setting.metadata.get("secret"):
                assert f"{setting.name}:" in text, f"{setting.name} is missing from the example"


def test_the_installed_command_imports_a_python_handler_from_the_working_directory(tmp_path):
    (tmp_path / "myhandlers.py").write_text("def handle(events):\n    pass\n")
    config = tmp_path / "expiryd.yaml"
    config.write_text('redis: {nodes: ["redis://127.0.0.1:1"]}\nroutes: [{match: "*", python: "myhandlers:handle"}]\n')
    command = Path(sys.executable).parent / "expiryd"  # the console script, not python -m
    result = subprocess.run(
        [str(command), "check", "--config", str(config)], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert "cannot import" not in result.stderr
    assert "redis.nodes: cannot reach any seed node" in result.stderr  # the config loaded; the cluster is absent
