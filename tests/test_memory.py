"""Giving freed memory back: a trim is safe to call, and at most one happens an interval."""

from __future__ import annotations

from expiryd.memory import Trimmer, trim


def test_a_trim_on_this_system_hands_pages_back():
    assert trim() is True  # glibc, as in the container image and on Debian


def test_the_trimmer_trims_at_most_once_an_interval():
    trimmer = Trimmer(interval=3600.0)
    assert trimmer.after_churn() is True
    assert trimmer.after_churn() is False
