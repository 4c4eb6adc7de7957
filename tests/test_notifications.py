"""The notify-keyspace-events classes expiryd needs, and how they merge with what a node has set."""

from __future__ import annotations

from expiryd.notifications import merged_classes, missing_classes, required_classes


def test_notification_classes_are_added_and_existing_ones_kept():
    assert merged_classes("") == "Ex"
    assert merged_classes("Kg") == "KgEx"
    assert merged_classes("KEA") == "KEA"
    assert merged_classes("Ex") == "Ex"


def test_hash_class_is_required_only_for_hexpired_and_added_to_what_is_set():
    assert required_classes(schedule=False, kinds=["expired"]) == "Ex"
    assert required_classes(schedule=False, kinds=["expired", "hexpired"]) == "Exh"
    assert required_classes(schedule=True, kinds=["expired", "hexpired"]) == "Exgh"
    assert merged_classes("", "Exh") == "Exh"
    assert merged_classes("Kg$x", "Exh") == "Kg$xEh"
    assert merged_classes("KEA", "Exh") == "KEA"  # A already includes h and x


def test_the_schedule_class_is_added_and_a_covers_it():
    assert merged_classes("Ex", "Exg") == "Exg"
    assert merged_classes("", "Exg") == "Exg"
    assert merged_classes("KEA", "Exg") == "KEA"
    assert missing_classes("KEx", "Exg") == "g"
