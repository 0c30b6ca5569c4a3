"""One log stream: every line a process of ours writes to stderr (our own events, the standard
library's, uvicorn's, librdkafka's) is one JSON object, or one readable line on a terminal.

Our own events go through structlog straight to stderr; the standard library's records (and
through it uvicorn's, psycopg's and librdkafka's, which confluent-kafka hands to the
`librdkafka` logger given in every client's configuration) are rendered by the same
processors by structlog's ProcessorFormatter."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable

import structlog

LIBRDKAFKA = logging.getLogger("librdkafka")
_DIGITS = re.compile(r"\d+")  # "after 0ms", "pool-1": the same message for the throttle


class Throttle(logging.Filter):
    """Lets through at most one record per logger and message template every `every_s`
    seconds (a library retrying a connection logs each try: psycopg's pool, librdkafka); the
    next one let through says how many were held back."""

    def __init__(self, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s = every_s
        self.clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, _DIGITS.sub("#", str(record.msg))[:160])
        now = self.clock()
        last, held = self._seen.get(key, (float("-inf"), 0))
        if now - last < self.every_s:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > 1000:  # templates are few; messages with ids in them are not
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.held_back = held
        return True


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
                structlog.stdlib.ExtraAdder(allow=["held_back"]),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    handler.addFilter(Throttle())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Libraries speak at WARNING and above: their INFO is chatter next to our own events.
    root.setLevel(max(numeric, logging.WARNING))
