"""Schema migrations: numbered plain SQL files applied once each, under an advisory lock."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
import structlog
from psycopg import sql

from payment_worker.adapters.postgres.queries import sql_dir, translate
from payment_worker.exceptions import PaymentWorkerError

log = structlog.get_logger("payment_worker.migrate")

_LOCK_KEY = 0x7061796D  # "paym": one migrator at a time per database
# Only NNN_name.sql files are migrations: queries.sql and schema.sql (the schema they leave,
# written by schema_dump) sit beside them and are never applied.
_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


# Migrations rewritten after release, each only to drop what a later migration replaces (the
# verdict-deciding begin_payments of 002 and 003, replaced by 006's), with the checksums of
# the text they had: a database migrated with that text is at the same schema once the later
# migration has run, so its recorded checksum is updated, not refused.
REWRITTEN = {
    2: {"566a773c3db103e9728c9884e8c9198852b78874b2364e071bfb15a8cee2e16a"},
    3: {"13e7bee2dcc03a92ec9ce60e0184f842a2cf61062659e8f55ff97ffbc9223748"},
}


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def available(directory: Path | None = None) -> list[Migration]:
    directory = directory or sql_dir()
    found = []
    for path in sorted(directory.iterdir()):
        match = _FILE.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path.read_text("utf-8")))
    return found


class SchemaMismatch(PaymentWorkerError):
    """The database schema and this code disagree; the message says what to do."""


def latest_version(known: list[Migration] | None = None) -> int:
    return max(migration.version for migration in known or available())


def schema_problem(schema: str, applied: set[int]) -> str | None:
    """Why `run` or `replay` must not start on this schema (None when it is current)."""
    needed = latest_version()
    missing = sorted(set(range(1, needed + 1)) - applied)
    if not missing:
        return None
    at = max(applied, default=0)
    return (
        f"schema {schema} is at version {at:03d}, this code needs {needed:03d} "
        f"(missing {', '.join(f'{v:03d}' for v in missing)}): run `payment-worker migrate` first"
    )


def migrate(url: str, schema: str, *, accept_changed: bool = False) -> list[int]:
    """Apply what is missing; returns the versions applied (empty when up to date).

    SchemaMismatch when the schema is newer than this code (migrations never go backwards) or
    an applied migration's file changed since (unless `accept_changed`: then the new checksum
    is recorded, for a deliberate repair)."""
    applied_now: list[int] = []
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
            try:
                ident = sql.Identifier(schema)
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
                conn.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                        " version integer PRIMARY KEY, name text NOT NULL,"
                        " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
                    ).format(ident)
                )
                done = {
                    row[0]: row[1]
                    for row in conn.execute(
                        sql.SQL("SELECT version, checksum FROM {}.schema_migrations").format(ident)
                    )
                }
                known = available()
                newest = latest_version(known)
                if done and max(done) > newest:
                    raise SchemaMismatch(
                        f"schema {schema} is at version {max(done):03d}, newer than this code's "
                        f"{newest:03d}: run the payment-worker release that wrote it"
                    )
                for migration in known:
                    if migration.version in done:
                        if done[migration.version] != migration.checksum:
                            rewritten = done[migration.version] in REWRITTEN.get(
                                migration.version, set()
                            )
                            if not (accept_changed or rewritten):
                                raise SchemaMismatch(
                                    f"migration {migration.version:03d} ({migration.name}) "
                                    "changed since it was applied; restore the file, or after a "
                                    "deliberate repair run `payment-worker migrate "
                                    "--accept-changed-migrations` to record its new checksum"
                                )
                            conn.execute(
                                sql.SQL(
                                    "UPDATE {}.schema_migrations SET checksum = %s"
                                    " WHERE version = %s"
                                ).format(ident),
                                (migration.checksum, migration.version),
                            )
                            say = log.info if rewritten else log.warning
                            say(
                                "migration_rewritten"
                                if rewritten
                                else "migration_checksum_accepted",
                                version=migration.version,
                                name=migration.name,
                            )
                        continue
                    with conn.transaction():
                        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
                        conn.execute(migration.text.encode("utf-8"))
                        conn.execute(
                            sql.SQL(
                                "INSERT INTO {}.schema_migrations (version, name, checksum)"
                                " VALUES (%s, %s, %s)"
                            ).format(ident),
                            (migration.version, migration.name, migration.checksum),
                        )
                    log.info("migration_applied", version=migration.version, name=migration.name)
                    applied_now.append(migration.version)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    except psycopg.Error as exc:
        raise translate(exc) from exc
    return applied_now
