"""Rows as values (adapters/postgres/rows.py): what the outbox keeps of a message's headers."""

from __future__ import annotations

import json

import pytest
from psycopg.types.json import Jsonb, JsonbBinaryDumper

from payment_worker.adapters.postgres.rows import headers_from_json, headers_json


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("ce_id", b"abc"), ("empty", b""), ("null", None)],
        [('quote"and\\back', b"\x00\xff"), ("ünïcödé ✓", b"x"), ("dlq-name-hex:ff00", None)],
        [("\n\t", b"\r\n"), ("\u2028", b"{}")],
    ],
)
def test_outbox_headers_are_the_json_json_dumps_would_write(
    headers: list[tuple[str, bytes | None]],
) -> None:
    """The outbox keeps headers as `[[name, hex or null], ...]`: the text written directly
    means exactly what json.dumps of those lists means, whatever the names, and reads back
    as the headers."""
    dumped = bytes(JsonbBinaryDumper(Jsonb).dump(headers_json(headers)))
    assert dumped[:1] == b"\x01"  # jsonb's binary format version
    meant = [[n, v.hex() if v is not None else None] for n, v in headers]
    assert json.loads(dumped[1:]) == json.loads(json.dumps(meant)) == meant
    assert headers_from_json(json.loads(dumped[1:])) == headers
