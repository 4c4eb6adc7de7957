"""expiryd's own log: JSON lines on standard error by default, or text for humans.

Every line carries the replica id. Fields passed as ``extra`` become JSON keys
(or ``key=value`` pairs in text), so a transition reads as one line. Routine
transitions (elected, stopped for a rollout) log at info; warning is for what
needs a look, error for what may have lost events::

    configure_logging(replica="1", fmt="json", level="info")
    log.info("became leader", extra={"term": 7, "reason": "lease acquired"})
    # {"ts": "2026-11-22T19:30:00.123Z", "level": "info", "logger": "expiryd.election",
    #  "msg": "became leader", "replica": "1", "term": 7, "reason": "lease acquired"}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["configure_logging"]

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    def __init__(self, *, replica: str) -> None:
        super().__init__()
        self._replica = replica

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "replica": self._replica,
            **_fields(record),
        }
        if record.exc_info:
            document["error"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, *, replica: str) -> None:
        super().__init__()
        self._replica = replica

    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        line = f"{_timestamp(record)} {record.levelname:<7} [{self._replica}] {record.getMessage()}"
        line = f"{line} {pairs}" if pairs else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(*, replica: str, fmt: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter(replica=replica) if fmt == "json" else TextFormatter(replica=replica)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pottery logs a full traceback for every Redis error it meets while
    # acquiring or renewing; the election logs those outcomes in one line itself.
    logging.getLogger("pottery").setLevel(logging.CRITICAL)
    # httpx logs every request, URL included, at info: a line per webhook call, and the
    # URL may carry a token. The webhook handler reports failures itself.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
