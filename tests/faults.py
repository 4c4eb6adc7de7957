"""Rude network faults, injected as an operator's chaos test would: iptables DROP rules on loopback, a skewed clock.

Both need root (and ``iptables``, and Debian's ``faketime`` for the clock); :func:`skip_unless_faults_can_run`
skips a test, with the reason, where they cannot run::

    with Firewall() as firewall:
        firewall.silence(local_port=51234, remote_port=7000)     # that one connection, both ways, for good
        firewall.cut_off(gid=FAULT_GID, port=7000)               # a process from a node, new connections too
        firewall.restore()                                       # every rule gone, the connections carry on
    # every rule and chain removed, even when the test failed

    Replica(..., group=FAULT_GID)                                # a replica the owner match can single out
    Replica(..., env=skewed_clock(+2.0))                         # its wall clock 2 s ahead

Silenced connections are not closed: TCP retransmits into the void, exactly as when a NAT or a
conntrack table forgets a flow. A process is singled out by its group id rather than its user, so
that it keeps root's access to the interpreter; the ``owner`` match works only in chains reached from
OUTPUT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def faults_unavailable() -> str | None:
    """Why the fault tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "iptables rules and group switches need root"
    if shutil.which("iptables") is None:
        return "iptables is not installed (make setup installs it)"
    probe = subprocess.run(["iptables", "-S", "OUTPUT"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"iptables does not work here: {probe.stderr.strip()}"
    return None


def skip_unless_faults_can_run() -> None:
    reason = faults_unavailable()
    if reason is not None:
        pytest.skip(reason)


def skip_unless_faketime() -> None:
    if not LIBFAKETIME.exists():
        pytest.skip(f"{LIBFAKETIME} is missing (Debian's faketime; make setup installs it)")


def skewed_clock(seconds: float) -> dict[str, str]:
    """The environment that moves a process's wall clock by ``seconds`` (its monotonic clock stays true)."""
    return {
        "LD_PRELOAD": str(LIBFAKETIME),
        "FAKETIME": f"{seconds:+g}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }


def fault_gid() -> int:
    """A group id no one uses, for one process the owner match can single out."""
    return 40_000 + uuid.uuid4().int % 20_000


def _iptables(*arguments: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-w", *arguments], capture_output=True, text=True, check=check)


class Firewall:
    """Two chains of this test's own, one reached from INPUT and one from OUTPUT, removed on exit."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6].upper()
        self._chains = {"INPUT": f"XPD-IN-{tag}", "OUTPUT": f"XPD-OUT-{tag}"}

    def __enter__(self) -> Firewall:
        for hook, chain in self._chains.items():
            _iptables("-N", chain)
            _iptables("-I", hook, "1", "-j", chain)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for hook, chain in self._chains.items():
            _iptables("-D", hook, "-j", chain, check=False)
            _iptables("-F", chain, check=False)
            _iptables("-X", chain, check=False)

    def silence(self, *, local_port: int, remote_port: int) -> None:
        """Drop every packet of one loopback connection, both ways; neither end is told."""
        chain = self._chains["INPUT"]
        for source, destination in ((remote_port, local_port), (local_port, remote_port)):
            _iptables(
                "-A", chain, "-p", "tcp", "-s", "127.0.0.1", "--sport", str(source), "--dport", str(destination),
                "-j", "DROP",
            )  # fmt: skip

    def cut_off(self, *, gid: int, port: int) -> None:
        """Drop what the processes of group ``gid`` send to ``port``: old connections stall, new ones never open."""
        _iptables(
            "-A", self._chains["OUTPUT"], "-p", "tcp", "--dport", str(port), "-m", "owner", "--gid-owner", str(gid),
            "-j", "DROP",
        )  # fmt: skip

    def restore(self) -> None:
        for chain in self._chains.values():
            _iptables("-F", chain)
