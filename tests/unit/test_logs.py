"""One log stream (logs.py): our events, the standard library's records (psycopg, uvicorn) and
librdkafka's lines come out in one format: JSON objects, or readable lines on a terminal.
Each case runs in a fresh interpreter, since logging is process-wide state."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = """
import logging, sys, time
import structlog
from confluent_kafka import Producer
from payment_worker.adapters.kafka import for_producer
from payment_worker.config import load_settings
from payment_worker.logs import configure_logging

configure_logging("INFO", sys.argv[1] or None)
structlog.get_logger("payment_worker").info("our_event", n=1)
logging.getLogger("psycopg.pool").warning("error connecting in 'pool-1': refused")
logging.getLogger("uvicorn.error").error("uvicorn speaking")
logging.getLogger("psycopg.pool").info("library chatter below WARNING")
settings = load_settings(kafka_bootstrap_servers="127.0.0.1:1")
producer = Producer(for_producer(settings.kafka_common()))
for _ in range(10):  # two seconds of polling: the refused connection is logged on poll
    producer.poll(0.2)
"""


def run(log_format: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, log_format],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == ""
    return [line for line in done.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize("log_format", ["json", ""], ids=["PAYMENT_LOG_FORMAT=json", "no tty"])
def test_every_line_is_one_json_object(log_format: str) -> None:
    """JSON when asked, and by default off a terminal (here stderr is a pipe)."""
    records = [json.loads(line) for line in run(log_format)]
    by_logger = {r.get("logger", "payment_worker"): r for r in records}
    assert by_logger["payment_worker"]["event"] == "our_event"
    assert by_logger["psycopg.pool"]["level"] == "warning"
    assert by_logger["uvicorn.error"]["event"] == "uvicorn speaking"
    assert "Connection refused" in by_logger["librdkafka"]["event"]
    assert all("timestamp" in r and "level" in r for r in records)
    assert not any("chatter" in r["event"] for r in records)


def test_console_format_is_readable_lines_with_the_same_events() -> None:
    """PAYMENT_LOG_FORMAT=console: the same events, as readable lines rather than JSON."""
    lines = run("console")
    assert lines, "nothing logged"
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    text = "\n".join(lines)
    assert "our_event" in text and "uvicorn speaking" in text
    assert "librdkafka" in text and "Connection refused" in text
