"""Routing: the first route that takes the event's kind and whose glob matches the raw key."""

from __future__ import annotations

import pytest

from expiryd.config import BatchConfig, RetryConfig, RouteConfig
from expiryd.routing import Route, Router


def test_router_takes_the_first_matching_glob_on_raw_bytes():
    router = Router(
        [
            Route(config=RouteConfig(match="order:*", name="a"), handler=None),  # type: ignore[arg-type]
            Route(config=RouteConfig(match="*", name="b"), handler=None),
        ]
    )  # type: ignore[arg-type]
    assert router.match(b"order:\xff").name == "a"
    assert router.match(b"session:1").name == "b"
    assert Router([]).match(b"x") is None


def test_glob_classes_and_single_character_wildcards():
    route = Route(config=RouteConfig(match="job:[ab]?:*", name="r"), handler=None)  # type: ignore[arg-type]
    assert route.matches(b"job:a1:x")
    assert not route.matches(b"job:c1:x")
    assert not route.matches(b"job:a12")


def test_a_route_gets_only_the_event_kinds_it_lists():
    expired_only = Route(config=RouteConfig(match="*", name="plain"), handler=None)  # type: ignore[arg-type]
    both = Route(config=RouteConfig(match="cart:*", name="both", events=["expired", "hexpired"]), handler=None)  # type: ignore[arg-type]
    router = Router([both, expired_only])
    assert router.match(b"cart:1", "hexpired") is both
    assert router.match(b"other:1", "hexpired") is None
    assert router.match(b"other:1") is expired_only
    assert Router([expired_only]).match(b"cart:1", "hexpired") is None


def test_a_route_reads_its_settings_from_its_route_config():
    config = RouteConfig(
        match="order:*",
        name="orders",
        concurrency=4,
        queue_size=50,
        events=["hexpired"],
        batch=BatchConfig(size=7),
        retry=RetryConfig(max_attempts=2),
    )
    route = Route(config=config, handler=None)  # type: ignore[arg-type]
    assert (route.name, route.pattern, route.concurrency, route.queue_size) == ("orders", "order:*", 4, 50)
    assert route.batch is config.batch and route.retry is config.retry
    assert route.events == frozenset({"hexpired"}) and route.payload is None


def test_an_unnamed_route_is_called_by_its_glob():
    assert Route(config=RouteConfig(match="session:*"), handler=None).name == "session:*"  # type: ignore[arg-type]


def test_routes_are_told_apart_by_identity_even_with_equal_settings():
    config = RouteConfig(match="*")
    first, second = (Route(config=config, handler=None) for _ in range(2))  # type: ignore[arg-type]
    assert first != second and {first: 1, second: 2}[first] == 1


def test_a_route_takes_keyword_arguments_only():
    with pytest.raises(TypeError):
        Route(RouteConfig(match="*"), None)  # type: ignore[misc]
