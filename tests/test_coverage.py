"""Coverage reports: their form, the twin check, and the hash they live in."""

from __future__ import annotations

import asyncio

from expiryd.coverage import Coverage, CoverageStore, another_process_publishes


def reported(name: str, at: float, **since: float | None) -> Coverage:
    return Coverage(replica=name, written_at=at, since=since)


def test_a_report_survives_its_json_form():
    report = Coverage(
        replica="r-1", written_at=1.5, since={"10.0.0.7:6379": 2.25, "10.0.0.8:6379": None}, instance="a1b2"
    )
    assert Coverage.from_json("r-1", report.to_json()) == report


def test_a_report_of_an_older_version_reads_with_no_instance():
    assert Coverage.from_json("1", '{"written_at": 1.5, "since": {}}').instance == ""


def instance_report(instance: str, at: float) -> Coverage:
    return Coverage(replica="1", written_at=at, since={}, instance=instance)


def test_another_process_that_keeps_publishing_under_this_id_is_a_live_twin():
    assert another_process_publishes(instance_report("b", 10.0), instance_report("b", 11.0), instance="a")


def test_a_report_that_stopped_moving_is_a_crashed_predecessor_not_a_twin():
    assert not another_process_publishes(instance_report("b", 10.0), instance_report("b", 10.0), instance="a")


def test_this_processs_own_reports_are_no_twin():
    assert not another_process_publishes(instance_report("a", 10.0), instance_report("a", 11.0), instance="a")


def test_no_report_under_this_id_is_no_twin():
    assert not another_process_publishes(None, None, instance="a")


class CoverageHash:
    """One master's coverage hash, in memory."""

    def __init__(self, reports: list[Coverage]) -> None:
        self.fields = {report.replica.encode(): report.to_json().encode() for report in reports}

    async def hgetall(self, key: str) -> dict[bytes, bytes]:
        return dict(self.fields)

    async def hdel(self, key: str, *fields: bytes) -> int:
        for field in fields:
            del self.fields[field]
        return len(fields)


def test_reports_crashed_replicas_left_an_hour_ago_are_deleted_and_live_ones_kept():
    now = 10_000.0
    master = CoverageHash([reported("gone", now - 3601.0), reported("stale", now - 10.0), reported("2", now - 0.5)])
    store = CoverageStore(masters=[master], key="{expiryd}:leader:coverage", interval=1.0)
    others = asyncio.run(store.others(replica="1", now=now))
    assert [report.replica for report in others] == ["2"]
    assert set(master.fields) == {b"stale", b"2"}


def test_this_ids_report_is_read_with_the_rest_of_the_hash():
    master = CoverageHash([reported("1", 5.0), reported("2", 6.0)])
    store = CoverageStore(masters=[master], key="{expiryd}:leader:coverage", interval=1.0)
    assert asyncio.run(store.report(replica="1", now=6.0)) == reported("1", 5.0)
    assert asyncio.run(store.report(replica="3", now=6.0)) is None


# On a real cluster.


def test_a_second_process_with_a_live_replica_id_refuses_to_start_with_one_line(shared_cluster, config_for, spawn):
    config = config_for(shared_cluster)
    first = spawn("1", config)
    first.wait_ready()
    second = spawn("1", config)
    assert second.process.wait(timeout=30) == 2
    lines = second.stderr_path.read_text().splitlines()
    assert lines[-1].startswith("expiryd: config error: ") and "replica id '1' is already live" in lines[-1]
    assert first.running
