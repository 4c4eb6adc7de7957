"""Standalone ``redis-server`` processes on loopback: independent Redlock masters, or a stream's own server.

with standalone_servers(3, tmp_path) as masters:
    config = config_for(cluster, election={"masters": [m.url for m in masters]})
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis

from expiryd.devtools.localcluster import TlsFiles, free_ports

from .harness import wait_until


class StandaloneServer:
    def __init__(self, *, port: int, directory: Path, tls: TlsFiles | None = None) -> None:
        self.port = port
        self.directory = directory
        self.tls = tls
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}"

    def client(self) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=2.0, **(self.tls.client_arguments() if self.tls else {})
        )

    def __enter__(self) -> StandaloneServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        listen = self.tls.server_arguments(self.port) if self.tls else ["--port", str(self.port)]
        self._process = subprocess.Popen(
            [
                "redis-server",
                *listen,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                "redis.log",
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self._pings, timeout=15, what=f"redis-server on port {self.port}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()

    def _pings(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False


@contextmanager
def standalone_servers(count: int, directory: Path, *, tls: TlsFiles | None = None) -> Iterator[list[StandaloneServer]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(StandaloneServer(port=port, directory=directory / str(port), tls=tls))
            for port in free_ports(count)
        ]
