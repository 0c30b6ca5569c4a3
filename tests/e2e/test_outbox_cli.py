"""`payment-worker outbox retry`: the operator's one command for parked outbox rows."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def _park(db, topic: str, n: int) -> None:
    for i in range(n):
        db.execute(
            "INSERT INTO outbox (kind, topic, partition, key, value, headers, attempts,"
            " last_error, parked_at) VALUES ('reply', %s, 0, 'k', %s, '[]', 20, 'refused', now())",
            (topic, f"v{i}".encode()),
        )


def test_outbox_retry_hands_parked_rows_back_to_the_relays(db, worker_env):
    """`outbox retry --topic T` unparks T's parked rows only (due at once, refusals forgotten)
    and says how many; without --topic it unparks the rest; a second run finds none."""
    _park(db, "replies-a", 3)
    _park(db, "replies-b", 2)

    def retry(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "payment_worker", "outbox", "retry", *args],
            env={**os.environ, **worker_env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip()

    assert retry("--topic", "replies-a") == (
        "outbox: 3 parked row(s) for topic replies-a handed back to the relays"
    )
    rows = db.execute(
        "SELECT topic, count(*) FILTER (WHERE parked_at IS NOT NULL),"
        " max(attempts), bool_and(next_attempt_at <= now() OR parked_at IS NOT NULL)"
        " FROM outbox GROUP BY topic ORDER BY topic"
    ).fetchall()
    assert rows == [("replies-a", 0, 0, True), ("replies-b", 2, 20, True)]
    assert retry() == "outbox: 2 parked row(s) handed back to the relays"
    assert retry() == "outbox: 0 parked row(s) handed back to the relays"
