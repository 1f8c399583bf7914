"""Logging: structlog for the agent, with the stdlib loggers of its libraries folded into the same stream.

One stream, one format: JSON lines for machines (or whenever stderr is not a terminal, under ``auto``),
readable console lines for people.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Final, TextIO

import structlog
from structlog.typing import FilteringBoundLogger, Processor

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("json", "console", "auto")

# aiomqtt, paho and amqtt log through the stdlib; below WARNING they are chatty (amqtt especially, at
# INFO) and say nothing an operator of the agent needs.
_LIBRARY_MIN_LEVEL: Final = logging.WARNING

_handler: logging.Handler | None = None


def configure_logging(fmt: str, level: str) -> None:
    """Send the agent's logs, and library warnings, to stderr as JSON lines or console text.

    Safe to call again: the previous configuration is replaced, which tests rely on.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    is_tty = sys.stderr.isatty()
    as_json = fmt == "json" or (fmt == "auto" and not is_tty)
    level_no = logging.getLevelNamesMapping()[level.upper()]

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if as_json:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    else:
        # Plain tracebacks: the rich default prints local variables, which may hold secrets.
        renderer = structlog.dev.ConsoleRenderer(
            colors=is_tty, exception_formatter=structlog.dev.plain_traceback
        )

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    _route_stdlib(shared, renderer, max(level_no, _LIBRARY_MIN_LEVEL))


def get_logger(**bound: Any) -> FilteringBoundLogger:
    """A logger carrying ``bound`` in every event; it follows later calls to configure_logging."""
    logger: FilteringBoundLogger = structlog.get_logger(**bound)
    return logger


def _stderr_logger(*_args: Any) -> structlog.PrintLogger:
    # Resolve sys.stderr per logger, not once at configure time, so a replaced stderr (pytest's capsys,
    # a daemon redirecting it) is honoured.
    return structlog.PrintLogger(sys.stderr)


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes each record to the sys.stderr of the moment, for the same reason as _stderr_logger."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # emit() runs under the handler's lock
        super().emit(record)


def _route_stdlib(shared: list[Processor], renderer: Processor, level_no: int) -> None:
    global _handler  # noqa: PLW0603 - the one handler we own, so a reconfigure replaces it
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    handler.setLevel(level_no)
    root = logging.getLogger()
    # Only our own handler is replaced: others (pytest's caplog, an embedding application) stay.
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level_no)
    logging.getLogger("amqtt").setLevel(level_no)  # explicit: stays quiet if the root level is lowered
    _handler = handler
