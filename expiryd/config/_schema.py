"""What can be configured: one frozen dataclass per section, every setting with its default.

The loader (:mod:`expiryd.config._load`) walks these classes, so a field's name
is its key in the YAML file, in the environment and in error messages::

    config = Config(redis=RedisConfig(nodes=["redis://10.0.0.7:6379"]),
                    routes=[RouteConfig(match="order:*", log=LogHandlerConfig())])
    config.election.lease             # 5.0 (seconds)
    takeover_gap(config.election)     # 6.6 (seconds)
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Annotated, Any

from ..events import EXPIRED
from ..keys import DEFAULT_DEAD_LETTER_STREAM, DEFAULT_LOCK_NAME

# Marks a float field as a duration in seconds, written as "500ms", "5s" or "1m".
DURATION = "duration"
Duration = Annotated[float, DURATION]
# A duration that may also be zero ("do not wait").
ZERO_OK = "zero_ok"
# A size in bytes: 512KB, 64MB, 1GB (powers of 1024), or a bare number of bytes.
SIZE = "size"
Size = Annotated[int, SIZE]
Wait = Annotated[float, DURATION, ZERO_OK]


@dataclass(frozen=True)
class TlsConfig:
    # Used when the URLs say rediss://. No ca_file: the system's trusted CAs.
    ca_file: str | None = None
    # A client certificate and its key, for servers that require one (mutual TLS).
    cert_file: str | None = None
    key_file: str | None = None
    check_hostname: bool = True


@dataclass(frozen=True)
class KeepaliveConfig:
    # TCP keepalive on every connection expiryd opens (Redis, webhooks). Probes start after `idle`
    # without traffic, so a NAT or load balancer that forgets idle flows (AWS NAT: 350 s) never sees
    # one idle; a peer that stops answering `count` probes `interval` apart is declared dead.
    idle: Duration = 30.0
    interval: Duration = 5.0
    count: int = 3


@dataclass(frozen=True)
class RedisConfig:
    nodes: list[str] = field(default_factory=list)
    tls: TlsConfig = field(default_factory=TlsConfig)
    keepalive: KeepaliveConfig = field(default_factory=KeepaliveConfig)
    username: str | None = None
    password_file: str | None = None
    ensure_notifications: bool = True
    topology_interval: Duration = 1.0
    connect_timeout: Duration = 2.0
    # Each subscription PINGs its own socket this often; one silent for watchdog_timeout after a PING is lost.
    watchdog_interval: Duration = 1.0
    watchdog_timeout: Duration = 2.0
    # Filled from EXPIRYD_REDIS_PASSWORD or password_file, never from YAML or flags.
    password: str | None = field(default=None, repr=False, metadata={"secret": True})


@dataclass(frozen=True)
class ElectionConfig:
    lock_name: str = DEFAULT_LOCK_NAME
    masters: list[str] = field(default_factory=list)
    lease: Duration = 5.0
    renew_interval: Duration = 1.0
    renew_deadline: Duration = 3.0
    retry_interval: Duration = 0.5


@dataclass(frozen=True)
class MemoryConfig:
    # What one replica may hold of keys and events, split among the schedule, the replay history and
    # the merged queue (see memory_bounds); each part's own max_bytes, if set, takes its share.
    # Leave room above it for the process itself: about 60 MB.
    budget: Size = 256 * 1024 * 1024


@dataclass(frozen=True)
class PipelineConfig:
    queue_size: int = 100_000
    # The merged queue's bound in bytes (estimated per event); None: its share of memory.budget.
    queue_bytes: Size | None = None
    overflow_wait: Duration = 5.0
    shutdown_grace: Duration = 10.0


@dataclass(frozen=True)
class ReplayConfig:
    enabled: bool = True
    # None: derived from the election timings (see _with_derived_replay).
    window: Duration | None = None
    warmup: Duration | None = None
    # The history kept for a successor, in bytes (about 170 bytes per event with 25-byte keys);
    # None: its share of memory.budget.
    max_bytes: Size | None = None
    clock_tolerance: Duration = 2.0


@dataclass(frozen=True)
class ScheduleConfig:
    # Touch each routed key at its due time, so it expires then and not when Redis's own cycle finds it.
    enabled: bool = True
    # What the schedule holds at most, in bytes (about 50 MB per million keys with 25-byte names, on
    # every replica); keys past it fire on Redis's own timing. None: its share of memory.budget.
    max_bytes: Size | None = None
    # Keys due further ahead wait for a rescan that finds them within the horizon.
    horizon: Duration = 3600.0
    # How often every primary is scanned again for routed keys (and for those beyond the horizon).
    rescan_interval: Duration = 600.0
    # Keys a recovery scan visits per second, per replica.
    scan_rate: int = 20_000


@dataclass(frozen=True)
class SweepConfig:
    # The leader SCANs for payload companions whose key is gone: expirations no subscriber heard.
    enabled: bool = True
    # Between the starts of two sweeps (and one right after a replica becomes leader).
    interval: Duration = 60.0
    # Longer than an expired event takes to reach the leader and have its companion deleted.
    confirm_after: Duration = 10.0
    # Keys a second each primary's SCAN visits, at most: a sweep must not crowd out the cluster's clients.
    scan_rate: int = 20_000
    # SCAN's COUNT.
    count: int = 1_000
    # Candidates waiting for their second look; a scan pauses while this many wait.
    max_candidates: int = 100_000


@dataclass(frozen=True)
class HttpConfig:
    listen: str = "127.0.0.1:9101"
    # When set, /metrics is served here only, and no longer on listen.
    metrics_listen: str | None = None


@dataclass(frozen=True)
class LogConfig:
    format: str = "json"
    level: str = "info"


@dataclass(frozen=True)
class LogHandlerConfig:
    path: str | None = None


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    timeout: Duration = 10.0
    headers: dict[str, str] = field(default_factory=dict)
    # The signing secret: from the environment variable named here, or from a file.
    secret_env: str | None = None
    secret_file: str | None = None
    # Allows sending a signed request over plain http to a host other than loopback.
    allow_insecure: bool = False
    secret: str | None = field(default=None, repr=False, metadata={"secret": True})


@dataclass(frozen=True)
class StreamConfig:
    name: str
    maxlen: int = 1_000_000
    # Another Redis server (redis://host:port/db or rediss://); by default the stream lives on the cluster.
    url: str | None = None
    # For a rediss:// url; the cluster's redis.tls does not apply to another server.
    tls: TlsConfig = field(default_factory=TlsConfig)
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    password: str | None = field(default=None, repr=False, metadata={"secret": True})


@dataclass(frozen=True)
class BatchConfig:
    size: int = 100
    max_wait: Wait = 0.0


@dataclass(frozen=True)
class RetryConfig:
    # Attempts in all, the first included; then the batch goes to the dead-letter stream. With the
    # waits below they span about an hour: a receiver's restart or a bad deploy loses nothing.
    max_attempts: int = 20
    # The wait after the first failed attempt, doubling per attempt up to max_backoff (full jitter).
    backoff: Duration = 0.5
    max_backoff: Duration = 600.0
    # Attempts made in the leader's memory; the later ones wait in Redis, in the route's retry set,
    # where a leader change or a restart of every replica loses none of them.
    in_memory: int = 3
    # Events the route's retry set holds at most; a failed batch past it goes to the dead-letter stream.
    max_parked: int = 100_000


@dataclass(frozen=True)
class RouteConfig:
    match: str
    name: str | None = None
    concurrency: int = 1
    queue_size: int = 10_000
    batch: BatchConfig = field(default_factory=BatchConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    # A template naming the key that holds the event's data, e.g. "{key}:payload".
    payload: str | None = None
    # How much longer than its key a companion lives: Companions' keep_for. The sweep reads a key's
    # due time from its companion's expire time less this, and delivers no key gone before then.
    payload_keep_for: Duration = 86400.0
    # A payload larger than this is not copied: its companion is set aside under a name of the
    # dead-letter stream's entry, which refers to it (see the README, "Payload after expiry").
    payload_max_bytes: Size = 4 * 1024 * 1024
    # Payloads read for one handler call at most: a batch whose payloads pass it goes in parts.
    payload_batch_bytes: Size = 16 * 1024 * 1024
    log: LogHandlerConfig | None = None
    webhook: WebhookConfig | None = None
    stream: StreamConfig | None = None
    # "package.module:function", called with a list of events; sync functions run in a thread.
    python: str | None = None
    # The keyevents this route takes: expired (a key expired), hexpired (fields of a hash expired).
    events: list[str] = field(default_factory=lambda: [EXPIRED])

    @property
    def label(self) -> str:
        """The route's name in metrics and logs: ``name``, or the glob itself."""
        return self.name or self.match


HANDLER_KINDS = ("log", "webhook", "stream", "python")

# Where a route leaves them out, concurrency and batch.size depend on its handler, as measured in
# bursts of 100k-200k keys (BENCHMARKS.md, "Handlers"): a webhook call is an HTTP request and a
# stream batch one round trip to the stream's node, so with one lane of 100 events both mostly
# waited; bigger batches, and more of them in flight, went 1.7x (webhook) and 1.2-1.4x (stream)
# faster. Log and python routes keep RouteConfig's defaults.
HANDLER_DEFAULTS: dict[str, dict[str, Any]] = {
    "webhook": {"concurrency": 2, "batch": {"size": 500}},
    "stream": {"concurrency": 4, "batch": {"size": 500}},
}


@dataclass(frozen=True)
class DeadLetterConfig:
    stream: str = DEFAULT_DEAD_LETTER_STREAM
    maxlen: int = 100_000
    # The stream's memory on its primary at most (MEMORY USAGE); the oldest entries are trimmed past it.
    max_bytes: Size = 64 * 1024 * 1024


@dataclass(frozen=True)
class Config:
    id: str = field(default_factory=socket.gethostname)
    redis: RedisConfig = field(default_factory=RedisConfig)
    election: ElectionConfig = field(default_factory=ElectionConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    log: LogConfig = field(default_factory=LogConfig)
    dead_letter: DeadLetterConfig = field(default_factory=DeadLetterConfig)
    routes: list[RouteConfig] = field(default_factory=list)
    source: str = field(default="defaults", compare=False, metadata={"internal": True})


# A follower waits election.retry_interval times a factor drawn from this range between lease
# attempts, so that replicas started together do not keep trying at the same instant. The upper
# end is how late a follower can try after the lease is free, which the takeover gap must allow for.
RETRY_JITTER = (0.8, 1.2)


def takeover_gap(election: ElectionConfig) -> float:
    """The longest a dead leader's last progress record can precede its successor's takeover."""
    return election.lease + election.retry_interval * RETRY_JITTER[1] + election.renew_interval


# Replay timings left unset are derived from the takeover gap (see takeover_gap): a replica defers
# to a better-placed one (see expiryd.succession) at most WARMUP_MARGIN longer than the gap, and
# the window spans WINDOW_GAPS gaps and WINDOW_MARGIN more. Two gaps leave room for a successor that
# dies before its first progress record: the leader after it starts from a mark up to two gaps old.
# With the default election timings (a 6.6 s gap) the margins make the warm-up 8 s and the window
# 15 s, the figures the README and the example configuration give.
WARMUP_MARGIN = 1.4
WINDOW_GAPS = 2
WINDOW_MARGIN = 1.8


# How memory.budget is split among the parts whose max_bytes is left unset.
MEMORY_SHARES = {"schedule": 0.5, "replay": 0.25, "queue": 0.25}


@dataclass(frozen=True)
class MemoryBounds:
    """The byte bound of each part of a replica's memory: as set, or its share of ``memory.budget``."""

    schedule: int
    replay: int
    queue: int


def memory_bounds(config: Config) -> MemoryBounds:
    """Each part's ``max_bytes`` as set or, left unset, its share of what the parts set leave of the budget.

    With the defaults (a 256 MB budget): 128 MB for the schedule, 64 MB each for the replay history and
    the merged queue.
    """
    set_ = {
        "schedule": config.schedule.max_bytes,
        "replay": config.replay.max_bytes,
        "queue": config.pipeline.queue_bytes,
    }
    left = max(0, config.memory.budget - sum(size for size in set_.values() if size is not None))
    unset_share = sum(share for part, share in MEMORY_SHARES.items() if set_[part] is None)
    derived = {
        part: size if size is not None else int(left * MEMORY_SHARES[part] / unset_share) for part, size in set_.items()
    }
    return MemoryBounds(**derived)


@dataclass(frozen=True)
class ReplayTimings:
    """``replay.window`` and ``replay.warmup`` in seconds: as set, or derived from the election timings."""

    window: float
    warmup: float


def replay_timings(replay: ReplayConfig, election: ElectionConfig) -> ReplayTimings:
    """The replay timings, each as set or, left unset, derived from the takeover gap: both must outlast it.

    With the default election timings the warm-up is 8 s and the window 15 s.
    """
    gap = takeover_gap(election)
    return ReplayTimings(
        window=replay.window if replay.window is not None else round(WINDOW_GAPS * gap + WINDOW_MARGIN, 3),
        warmup=replay.warmup if replay.warmup is not None else round(gap + WARMUP_MARGIN, 3),
    )
