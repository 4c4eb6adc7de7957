"""Prometheus metrics of one expiryd replica.

All metrics live on the registry of one :class:`Metrics` object, which the
daemon creates and hands to each part of the data path, so two replicas in one
process (as in tests) never share counters::

    metrics = Metrics()
    metrics.events_received.labels(node="10.0.0.7:6379").inc(250)
    text = metrics.exposition()          # what /metrics serves

Counters on the hot path are incremented once per batch, not once per event.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from . import __version__

__all__ = ["Metrics"]

_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_HANDLE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        Info("expiryd_build", "Version of the running expiryd.", registry=r).info({"version": __version__})

        # Election
        self.is_leader = Gauge(
            "expiryd_is_leader", "1 while this replica leads and hands events to handlers.", registry=r
        )
        self.leader_term = Gauge(
            "expiryd_leader_term", "Fencing token of the current leadership term (0 when following).", registry=r
        )
        self.leader_transitions = Counter(
            "expiryd_leader_transitions", "Times this replica became leader or stopped leading.", ["to"], registry=r
        )
        self.leader_stepdowns = Counter(
            "expiryd_leader_stepdowns", "Times this replica stopped leading, by reason.", ["reason"], registry=r
        )
        self.leader_eligible = Gauge(
            "expiryd_leader_eligible",
            "1 when this replica may take the lease: its replay buffer has run long enough to cover a takeover.",
            registry=r,
        )
        self.subscriptions_unbroken_seconds = Gauge(
            "expiryd_subscriptions_unbroken_seconds",
            "How long every current primary has been subscribed without a break (0 while one is not).",
            registry=r,
        )
        self.lock_renewals = Counter(
            "expiryd_lock_renewals", "Lease renewals by result (ok, error, lost).", ["result"], registry=r
        )

        # Fan-in
        self.cluster_primaries = Gauge("expiryd_cluster_primaries", "Primaries in the last topology read.", registry=r)
        self.topology_refreshes = Counter(
            "expiryd_topology_refreshes", "Topology reads by result.", ["result"], registry=r
        )
        self.node_subscribed = Gauge(
            "expiryd_node_subscribed",
            "1 while the expired-event subscription to this primary is live.",
            ["node"],
            registry=r,
        )
        self.node_clock_offset = Gauge(
            "expiryd_node_clock_offset_seconds",
            "How far the node's clock (TIME) runs ahead of this replica's host clock; negative: behind.",
            ["node"],
            registry=r,
        )
        self.clock_offset = Gauge(
            "expiryd_clock_offset_seconds",
            "How far the cluster's clock (the median of the nodes') runs ahead of this replica's host clock. "
            "expiryd keeps time by the cluster's clock, so this is what the host's clock is off by, not an error.",
            registry=r,
        )
        self.unheard_slots = Gauge(
            "expiryd_unheard_slots",
            "Slots whose primary this replica is not subscribed to, or that no usable primary serves: "
            "expirations there reach no handler through this replica.",
            registry=r,
        )
        self.unheard_node = Gauge(
            "expiryd_unheard_node_slots",
            "Slots of each primary that this replica is not subscribed to (a series per primary it misses).",
            ["node"],
            registry=r,
        )
        self.node_notifications_ok = Gauge(
            "expiryd_node_notifications_ok",
            "1 when the primary's notify-keyspace-events is known to include every class expiryd needs "
            "(E and x; g too with the schedule on).",
            ["node"],
            registry=r,
        )
        self.node_config_refused = Gauge(
            "expiryd_node_config_refused",
            "1 when the primary refused CONFIG, so notifications could not be checked or repaired.",
            ["node"],
            registry=r,
        )
        self.node_eviction_possible = Gauge(
            "expiryd_node_eviction_possible",
            "1 when the node's maxmemory and maxmemory-policy let it evict keys: an evicted key is lost, not expired.",
            ["node"],
            registry=r,
        )
        self.node_disconnects = Counter(
            "expiryd_node_disconnects", "Subscriptions lost, by node and reason.", ["node", "reason"], registry=r
        )
        self.events_received = Counter(
            "expiryd_events_received", "Expired events read from each primary.", ["node"], registry=r
        )
        self.events_dropped = Counter(
            "expiryd_events_dropped", "Events dropped before routing, by reason (queue_full).", ["reason"], registry=r
        )
        self.queue_full_seconds = Counter(
            "expiryd_queue_full_seconds",
            "Time a node subscription stopped reading because the merged queue was full.",
            ["node"],
            registry=r,
        )
        self.queue_depth = Gauge("expiryd_queue_depth", "Events waiting in the merged queue.", registry=r)

        # Dead letters
        self.dead_letter_entries = Gauge(
            "expiryd_dead_letter_entries", "Entries in the dead-letter stream, as the leader last read it.", registry=r
        )
        self.dead_letter_bytes = Gauge(
            "expiryd_dead_letter_bytes",
            "The dead-letter stream's memory on its primary (MEMORY USAGE), as the leader last read it.",
            registry=r,
        )
        self.dead_letters_trimmed = Counter(
            "expiryd_dead_letters_trimmed",
            "Dead letters trimmed, oldest first, to keep the stream within dead_letter.max_bytes.",
            registry=r,
        )

        # Memory: the parts memory.budget is split among
        self.memory_bytes = Gauge(
            "expiryd_memory_bytes",
            "Estimated bytes held by each part of memory.budget: schedule, replay (history) and queue (merged).",
            ["part"],
            registry=r,
        )
        self.memory_bound_bytes = Gauge(
            "expiryd_memory_bound_bytes", "Each part's share of memory.budget, in bytes.", ["part"], registry=r
        )

        # Processing
        self.events_skipped = Counter(
            "expiryd_events_skipped", "Events read while following, left for the leader.", registry=r
        )
        self.events_unrouted = Counter("expiryd_events_unrouted", "Events that matched no route.", registry=r)
        self.events_processed = Counter(
            "expiryd_events_processed",
            "Events by route and outcome: ok, dead_lettered and dropped are final; retried counts each retry; "
            "parked counts events put in the route's retry set after their in-memory attempts.",
            ["route", "outcome"],
            registry=r,
        )
        self.retry_set_entries = Gauge(
            "expiryd_retry_set_entries",
            "Events waiting in the route's retry set for their next attempt (read by the leader).",
            ["route"],
            registry=r,
        )
        self.retry_set_oldest_seconds = Gauge(
            "expiryd_retry_set_oldest_seconds",
            "How long ago the first attempt of the longest-waiting event in the route's retry set failed.",
            ["route"],
            registry=r,
        )
        self.handler_attempts = Counter(
            "expiryd_handler_attempts",
            "Handler calls (one per batch attempt), by route and result (ok, error).",
            ["route", "result"],
            registry=r,
        )
        self.event_handle_seconds = Histogram(
            "expiryd_event_handle_seconds",
            "Time a handler spent on one batch attempt.",
            ["route"],
            buckets=_HANDLE_BUCKETS,
            registry=r,
        )
        self.event_lag_seconds = Histogram(
            "expiryd_event_lag_seconds",
            "Time from receiving a batch's oldest event to finishing the batch "
            "(ok or dead-lettered); one observation per batch.",
            ["route"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.event_lateness_seconds = Histogram(
            "expiryd_event_lateness_seconds",
            "Time from a key's due time to the first handler call for its event (events with a known due time).",
            ["route"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.events_unscheduled = Counter(
            "expiryd_events_unscheduled",
            "Events a route handled without a known due time, so on Redis's own timing: the schedule was off, "
            "full or beyond its horizon, the node's notifications lack class g, or a lookup failed.",
            ["route"],
            registry=r,
        )
        self.route_queue_depth = Gauge(
            "expiryd_route_queue_depth", "Events waiting for a route's handler.", ["route"], registry=r
        )

        # Replay
        self.history_gaps = Counter(
            "expiryd_leader_history_gaps",
            "Primaries whose subscription broke while this replica led: handed over to a replica that heard "
            "the gap, or uncovered (no replica heard it; its events are lost unless a payload sweep finds them).",
            ["outcome"],
            registry=r,
        )
        self.unheard_seconds = Counter(
            "expiryd_unheard_seconds",
            "Seconds of a primary's Pub/Sub stream that no replica heard: a leader's uncovered gap, or the "
            "history a new leader lacked at takeover (its worst primary). Expirations in them reach payload "
            "routes through the sweep; other routes lose them.",
            registry=r,
        )
        self.replayed_events = Counter(
            "expiryd_replayed_events", "Events replayed from the buffer after taking over.", registry=r
        )
        self.replay_buffer_events = Gauge(
            "expiryd_replay_buffer_events", "Recent events kept for replay, per node.", ["node"], registry=r
        )
        self.replay_buffer_bytes = Gauge(
            "expiryd_replay_buffer_bytes",
            "Estimated memory the replay buffer holds, against replay.max_bytes.",
            registry=r,
        )
        self.replay_buffer_oldest_seconds = Gauge(
            "expiryd_replay_buffer_oldest_seconds", "Age of the oldest event kept for replay.", registry=r
        )
        self.replay_buffer_evicted = Counter(
            "expiryd_replay_buffer_evicted",
            "Events pushed out of the replay buffer by replay.max_bytes before any leader passed them.",
            registry=r,
        )
        self.progress_writes = Counter(
            "expiryd_progress_writes", "Progress records written by the leader.", ["result"], registry=r
        )

        # Schedule
        self.schedule_keys = Gauge(
            "expiryd_schedule_keys", "Keys waiting for their due time in the schedule.", registry=r
        )
        self.schedule_admissions = Counter(
            "expiryd_schedule_admissions",
            "Due-time lookups by result: scheduled; beyond_horizon and full (these fire on Redis's timing); "
            "no_ttl (persisted or gone); overflow and error (not looked up).",
            ["result"],
            registry=r,
        )
        self.schedule_touches = Counter(
            "expiryd_schedule_touches",
            "Keys touched at their due time by result: fired, rescheduled (TTL extended), no_ttl, early "
            "(Redis's clock behind), error (retried).",
            ["result"],
            registry=r,
        )
        self.schedule_scans = Counter(
            "expiryd_schedule_scans", "Recovery scans of a primary by result.", ["result"], registry=r
        )
        self.schedule_scan_progress = Gauge(
            "expiryd_schedule_scan_progress",
            "How far the current (or last) scan of a primary has got: keys visited over its keys at the start.",
            ["node"],
            registry=r,
        )
        self.schedule_scan_seconds = Gauge(
            "expiryd_schedule_scan_seconds", "How long the last complete scan of a primary took.", ["node"], registry=r
        )

        # Orphan sweep
        self.swept_events = Counter(
            "expiryd_swept_events",
            "Expirations no subscriber heard, found by the sweep as payload companion keys left behind.",
            ["route"],
            registry=r,
        )
        self.keys_removed_before_due = Counter(
            "expiryd_keys_removed_before_due",
            "Routed keys the sweep found gone before their due time (evicted, or deleted without their "
            "companion): not delivered as expirations.",
            ["route"],
            registry=r,
        )
        self.sweep_keys_scanned = Counter(
            "expiryd_sweep_keys_scanned", "Companion-named keys the sweep's SCANs returned.", registry=r
        )
        self.sweeps = Counter(
            "expiryd_sweeps", "Sweeps by result: complete, or error (a node's scan broke off).", ["result"], registry=r
        )
        self.sweep_last_complete = Gauge(
            "expiryd_sweep_last_complete_timestamp_seconds",
            "When the last sweep that scanned every primary ended (epoch seconds; 0: none yet).",
            registry=r,
        )
        self.sweep_interval = Gauge(
            "expiryd_sweep_interval_seconds",
            "The sweep's configured interval while the sweeper runs; 0 when it is off.",
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def forget_node(self, node: str) -> None:
        """Drop a node's per-node series once it is no longer a primary."""
        for gauge in (
            self.node_subscribed,
            self.node_notifications_ok,
            self.node_config_refused,
            self.node_eviction_possible,
            self.node_clock_offset,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(node)
