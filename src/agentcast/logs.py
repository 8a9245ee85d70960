"""Log output: text (the default) or one JSON object per line (``log_format: json``).

A JSON line has ``time`` (UTC, ISO 8601 with milliseconds), ``level``, ``logger`` and
``message``; ``connection`` (the connection id), ``user`` and ``topic`` where the log
call passed them with ``extra=``; uvicorn's access lines add ``client``, ``method``,
``path``, ``http_version`` and ``status``; an exception adds ``exc_info`` (its
traceback as text). Any other ``extra=`` key a log call passes is kept too.

No token reaches a log line in either format: :class:`~agentcast.security.credentials.
RedactingFilter` redacts the request lines of uvicorn's loggers, and the JSON formatter
applies the same redaction (:func:`~agentcast.security.credentials.redact_text`) to every
string it writes, so a token passed in ``?token=``, ``?ticket=``, a ``bearer.``
subprotocol or an ``Authorization: Bearer`` value that ends up in a message is replaced
by ``[redacted]``.

Stdlib :mod:`logging` only: a formatter of ~40 lines needs no dependency (python-json-
logger would bring the same ``extra`` handling, but not the redaction or uvicorn's
access fields).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from agentcast.security.credentials import redact_text
from agentcast.settings import Settings

__all__ = ["JsonFormatter", "configure_logging", "uvicorn_log_config"]

_TEXT_FORMAT = "%(levelname)s:     %(name)s %(message)s"
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",
    "taskName",
}
"""Attributes every record has: what is not among them came from ``extra=``."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            client, method, path, version, status = args
            entry.update(
                client=str(client),
                method=str(method),
                path=redact_text(str(path)),
                http_version=str(version),
                status=status,
            )
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = redact_text(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc_info"] = redact_text(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exc_info"] = redact_text(record.exc_text)
        if record.stack_info:
            entry["stack_info"] = record.stack_info
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _iso(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _level(settings: Settings) -> int:
    return 5 if settings.log_level == "trace" else getattr(logging, settings.log_level.upper())


def configure_logging(settings: Settings) -> None:
    """The root logger's handler (stderr) in ``settings.log_format``, at ``log_level``;
    the chatty loggers (the WebSocket protocol's per-connection lines, httpx's per
    request) at WARNING unless the level is debug or trace. uvicorn's own loggers get the
    same format through :func:`uvicorn_log_config`."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_level(settings))
    if settings.log_level not in ("debug", "trace"):
        logging.getLogger("agentcast.transport.ws").setLevel(logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per LLM request


def uvicorn_log_config(settings: Settings) -> dict[str, Any] | None:
    """uvicorn's ``log_config``: None (its own text format) for ``text``; for ``json``,
    its error and access loggers through :class:`JsonFormatter` (access lines on stdout,
    the rest on stderr, as uvicorn does)."""
    if settings.log_format != "json":
        return None
    json_formatter = {"()": "agentcast.logs.JsonFormatter"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": json_formatter},
        "handlers": {
            "default": {
                "formatter": "json",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
            },
            "access": {
                "formatter": "json",
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
            },
        },
        "loggers": {
            "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": ["access"], "level": "INFO", "propagate": False},
        },
    }
