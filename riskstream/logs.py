"""Logging set-up: human-readable by default, one JSON object per line for log shippers."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


LIBRARIES = (
    "kafka",
    "elastic_transport",
    "urllib3",
    "httpx",
    "httpcore",
    "aiokafka",
    "faust",
    "mode",
    "alembic",
    "asyncio",
)


def configure_logging(level: str = "INFO", *, json_lines: bool = False, libraries: str = "WARNING") -> None:
    """Root logger at ``level``; the client libraries in :data:`LIBRARIES` at ``libraries`` but never below it."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    library_level = logging.getLevelNamesMapping()[libraries.upper()]  # validated by the settings
    for noisy in LIBRARIES:
        logging.getLogger(noisy).setLevel(max(library_level, root.level))
    # sqlalchemy's INFO is every statement and its DEBUG every row: never below WARNING with the libraries
    logging.getLogger("sqlalchemy").setLevel(max(logging.WARNING, library_level, root.level))
