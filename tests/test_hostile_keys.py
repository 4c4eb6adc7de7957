"""Any key Redis can hold survives every encoding expiryd applies to it.

Keys are binary: they may be long, invalid UTF-8, or hold newlines, quotes,
template braces and glob characters. The properties below are checked over
generated keys; the last test sends a 64 KB key through the whole pipeline.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from expiryd.config import RouteConfig
from expiryd.events import Event
from expiryd.handlers import LogHandler
from expiryd.payload import PayloadKeys
from expiryd.routing import Route

from .harness import event_key, expire_keys, wait_for_single_leader, wait_until
from .receiver import WebhookReceiver

SPECIAL = st.sampled_from(
    [
        b"{key}",
        b"{",
        b"}",
        b"*",
        b"?",
        b"[",
        b"\n",
        b"\r",
        b'"',
        b"\\",
        b"\x00",
        b"\xff",
        b"\xc3\x28",
        "é".encode(),
        b"%s",
        b"{0}",
    ]
)
KEYS = st.lists(st.one_of(st.binary(max_size=40), SPECIAL), max_size=12).map(b"".join)


def event(key: bytes, payload: bytes | None = None) -> Event:
    return Event(key, "127.0.0.1:7000", 1732291200.123, 7, "2", payload, payload is not None)


def decoded(document: dict, name: str) -> bytes:
    return base64.b64decode(document[f"{name}_b64"]) if f"{name}_b64" in document else document[name].encode()


@given(key=KEYS, payload=KEYS)
def test_the_json_of_an_event_gives_back_the_exact_key_and_payload(key, payload):
    document = json.loads(json.dumps(event(key, payload).to_json()))
    assert decoded(document, "key") == key
    assert decoded(document, "payload") == payload
    assert ("key" in document) != ("key_b64" in document)


@given(key=KEYS)
def test_stream_fields_carry_the_raw_key(key):
    assert event(key).to_fields()["key"] == key


@given(key=KEYS)
def test_the_payload_template_substitutes_the_key_exactly_once(key):
    assert PayloadKeys(template="{key}:payload", client=None).key_for(key) == key + b":payload"
    assert PayloadKeys(template="p:{key}:{key}", client=None).key_for(key) == b"p:" + key + b":" + key


@given(key=KEYS)
def test_a_catch_all_route_matches_every_key_and_a_literal_route_only_its_own(key):
    assert Route(config=RouteConfig(match="*", name="all"), handler=None).matches(key)  # type: ignore[arg-type]
    assert not Route(config=RouteConfig(match="literal", name="x"), handler=None).matches(key + b"!")  # type: ignore[arg-type]


@settings(max_examples=50)
@given(keys=st.lists(KEYS, min_size=1, max_size=5))
def test_the_log_handler_writes_one_parseable_line_per_event(tmp_path_factory, keys):
    path = Path(tmp_path_factory.mktemp("log")) / "events.jsonl"
    handler = LogHandler(path=str(path))
    asyncio.run(handler.handle([event(key) for key in keys]))
    asyncio.run(handler.aclose())
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert [decoded(json.loads(line), "key") for line in lines[:-1]] == keys


def test_a_64_kb_key_with_every_awkward_byte_reaches_log_webhook_and_stream(shared_cluster, config_for, spawn):
    awkward = b'\xff\x00\n"\\{key}*?[' + "é".encode()
    long_key = b"long:" + (awkward * (64 * 1024 // len(awkward)))
    stream = "{hostile}:expired"
    with WebhookReceiver() as receiver:
        routes = [{"match": "long:*", "name": "log", "log": {}}]
        replica = spawn("1", config_for(shared_cluster, routes=routes))
        replica.wait_ready()
        wait_for_single_leader([replica])
        hook_routes = [{"match": "long:*", "name": "hook", "webhook": {"url": receiver.url}}]
        hook = spawn("2", config_for(shared_cluster, routes=hook_routes))
        stream_routes = [{"match": "long:*", "name": "stream", "stream": {"name": stream}}]
        streamer = spawn("3", config_for(shared_cluster, routes=stream_routes))
        for other in (hook, streamer):
            other.wait_ready()
            wait_for_single_leader([other])
        expire_keys(shared_cluster, [long_key])
        wait_until(lambda: receiver.events() and replica.events(), timeout=15, what="the long key delivered")
        assert [event_key(e) for e in receiver.events()] == [long_key]
    assert [event_key(e) for e in replica.events()] == [long_key]
    client = shared_cluster.client()
    wait_until(lambda: client.xlen(stream) == 1, timeout=10, what="the stream entry")
    assert client.xrange(stream)[0][1][b"key"] == long_key
    client.close()
