"""The Redis key names expiryd uses, spelled in one place."""

from __future__ import annotations

import redis.asyncio
from pottery import AIORedlock

from expiryd.config import Config
from expiryd.keys import DEFAULT_DEAD_LETTER_STREAM, DEFAULT_LOCK_NAME, coverage_key, lease_key, progress_key, term_key
from expiryd.topology import SLOTS


def test_keys_named_from_the_default_lock_name() -> None:
    assert lease_key(DEFAULT_LOCK_NAME) == "redlock:{expiryd}:leader"
    assert term_key(DEFAULT_LOCK_NAME) == "{expiryd}:leader:term"
    assert progress_key(DEFAULT_LOCK_NAME) == "{expiryd}:leader:progress"
    assert coverage_key(DEFAULT_LOCK_NAME) == "{expiryd}:leader:coverage"


def test_the_lease_key_is_where_pottery_keeps_the_lock() -> None:
    lock = AIORedlock(key="{t}:leader", masters={redis.asyncio.Redis()})
    assert lock.key == lease_key("{t}:leader")


def test_the_lease_term_progress_and_coverage_share_a_hash_slot() -> None:
    from redis.crc import key_slot

    slots = {key_slot(name(DEFAULT_LOCK_NAME).encode()) for name in (lease_key, term_key, progress_key, coverage_key)}
    assert len(slots) == 1 and 0 <= slots.pop() < SLOTS


def test_the_configuration_defaults_come_from_the_key_names() -> None:
    config = Config()
    assert config.election.lock_name == DEFAULT_LOCK_NAME
    assert config.dead_letter.stream == DEFAULT_DEAD_LETTER_STREAM
