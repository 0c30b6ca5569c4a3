"""One log stream: every line a process of ours writes to stderr (our own events, the standard
library's, uvicorn's, librdkafka's) is one JSON object, or one readable line on a terminal.

Our own events go through structlog straight to stderr; the standard library's records (and
through it uvicorn's, psycopg's and librdkafka's, which confluent-kafka hands to the
`librdkafka` logger given in every client's configuration) are rendered by the same
processors by structlog's ProcessorFormatter."""

from __future__ import annotations

import logging
import sys

import structlog

LIBRDKAFKA = logging.getLogger("librdkafka")


def configure_logging(level: str = "INFO", log_format: str | None = None) -> None:
    """`log_format` is `json` or `console`; by default JSON unless stderr is a terminal."""
    json = log_format == "json" if log_format else not sys.stderr.isatty()
    numeric = getattr(logging, level.upper(), logging.INFO)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.processors.add_log_level,
                stamp,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries speak at WARNING and above: their INFO is chatter next to our own events.
    root.setLevel(max(numeric, logging.WARNING))
