"""structlog set-up: JSON lines in production, readable console locally.

Everything, including grpc's and the stdlib's own loggers, goes to stderr
through one pipeline so `kubectl logs` shows one consistent format, and
stdout carries only a command's output (`netdp list --json | jq` must work
whatever the scan had to say).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Literal

import structlog

LogFormat = Literal["json", "console"]


class _Stderr:
    """Whatever `sys.stderr` is when a line is written, not when logging was set up.

    Loggers are cached on first use; a stream captured at set-up would outlive
    a replaced `sys.stderr` (an in-process caller, a test's capture) and then
    write to a closed file.
    """

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


_STDERR = _Stderr()


def default_format() -> LogFormat:
    """JSON inside a pod (or whenever stderr is not a terminal), console for people."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") or not sys.stderr.isatty():
        return "json"
    return "console"


def configure(level: str = "info", fmt: LogFormat | None = None) -> None:
    fmt = fmt or default_format()
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=_STDERR),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(_STDERR)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
