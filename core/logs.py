"""structlog set-up: JSON lines on stderr (stdout is for command output only), or, with
`--log-format console`, structlog's ConsoleRenderer: one aligned, human-readable line per
event (colours only when stderr is a terminal)."""

from __future__ import annotations

import logging
import sys

import structlog

FORMATS = ("json", "console")


def configure(level: str = "info", fmt: str = "json") -> None:
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: must be one of {', '.join(FORMATS)}")
    renderer: structlog.typing.Processor
    if fmt == "console":
        # ConsoleRenderer prints tracebacks itself (format_exc_info would flatten them).
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *([structlog.processors.format_exc_info] if fmt == "json" else []),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
