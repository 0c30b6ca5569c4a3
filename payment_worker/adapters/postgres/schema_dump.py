"""sql/schema.sql: the schema the numbered migrations leave, read back from PostgreSQL's catalogs.

`python -m payment_worker.adapters.postgres.schema_dump` (`make schema`) migrates a throwaway
schema, renders it and writes sql/schema.sql; `--check` only compares. The catalogs, not
pg_dump: pg_dump orders tables between functions by dependency, moves every constraint out of
its table, prints each signature on one line, writes a random `\\restrict` key on every run and
refuses a server newer than itself; the catalog's own deparsers (pg_get_indexdef,
pg_get_constraintdef, ...) run on the server, whatever client is installed.

What the renderer does not know (a view, a trigger, a type, a policy, ...) is an error naming
it, never a silent gap in the file."""

from __future__ import annotations

import argparse
import difflib
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from payment_worker.adapters.postgres.migrations import migrate
from payment_worker.adapters.postgres.queries import sql_dir
from payment_worker.exceptions import PaymentWorkerError

COMMAND = "make schema"
HEADER = f"""\
-- The schema as the migrations leave it (payment_worker/sql/0NN_*.sql, then the runner's
-- schema_migrations table): generated, do not edit. After changing a migration, regenerate it
-- with `{COMMAND}` (python -m payment_worker.adapters.postgres.schema_dump);
-- tests/integration/test_schema_file.py fails while it differs from a freshly migrated schema.
-- A reading copy, not a migration: the runner applies only files named NNN_name.sql.
-- Names are unqualified, as the migrations write them (they run with search_path set to
-- PAYMENT_DB_SCHEMA); owners and grants are the deployment's and are left out.
-- Order: tables by name (columns in order, constraints, then the table's indexes),
-- sequences, then functions by name and arguments."""
WIDTH = 100


class UnsupportedObject(PaymentWorkerError):
    """The schema holds an object the renderer cannot write yet: teach it, don't skip it."""


def default_path() -> Path:
    return sql_dir() / "schema.sql"


# Objects of kinds render() does not write: (what, query returning one name per object).
_UNSUPPORTED = [
    (
        "relation of another kind than table, index or sequence",
        "SELECT relname || ' (relkind ' || relkind::text || ')' FROM pg_class"
        " WHERE relnamespace = %(ns)s AND relkind NOT IN ('r', 'i', 'S')",
    ),
    (
        "table that is unlogged, partitioned, inherited, has options or row security",
        "SELECT relname FROM pg_class WHERE relnamespace = %(ns)s AND relkind = 'r'"
        " AND (relpersistence <> 'p' OR relispartition OR reloptions IS NOT NULL"
        " OR relrowsecurity OR EXISTS (SELECT FROM pg_inherits WHERE inhrelid = pg_class.oid))",
    ),
    (
        "identity or generated column",
        "SELECT c.relname || '.' || a.attname FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid"
        " WHERE c.relnamespace = %(ns)s AND a.attnum > 0 AND NOT a.attisdropped"
        " AND (a.attidentity <> '' OR a.attgenerated <> '')",
    ),
    (
        "type of its own (domain, enum, range, base)",
        "SELECT typname FROM pg_type WHERE typnamespace = %(ns)s AND typrelid = 0"
        " AND typcategory <> 'A'",
    ),
    (
        "trigger",
        "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
        " WHERE c.relnamespace = %(ns)s AND NOT t.tgisinternal",
    ),
    (
        "policy",
        "SELECT p.polname FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid"
        " WHERE c.relnamespace = %(ns)s",
    ),
    (
        "rule",
        "SELECT r.rulename FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class"
        " WHERE c.relnamespace = %(ns)s",
    ),
    (
        "aggregate, window function or function with an SQL-standard body",
        "SELECT proname FROM pg_proc WHERE pronamespace = %(ns)s"
        " AND (prokind NOT IN ('f', 'p') OR prosqlbody IS NOT NULL)",
    ),
    (
        "operator, collation, statistics object, text search or operator class",
        "SELECT oprname FROM pg_operator WHERE oprnamespace = %(ns)s"
        " UNION ALL SELECT collname FROM pg_collation WHERE collnamespace = %(ns)s"
        " UNION ALL SELECT stxname FROM pg_statistic_ext WHERE stxnamespace = %(ns)s"
        " UNION ALL SELECT cfgname FROM pg_ts_config WHERE cfgnamespace = %(ns)s"
        " UNION ALL SELECT dictname FROM pg_ts_dict WHERE dictnamespace = %(ns)s"
        " UNION ALL SELECT opcname FROM pg_opclass WHERE opcnamespace = %(ns)s"
        " UNION ALL SELECT opfname FROM pg_opfamily WHERE opfnamespace = %(ns)s"
        " UNION ALL SELECT conname FROM pg_conversion WHERE connamespace = %(ns)s"
        " UNION ALL SELECT extname FROM pg_extension WHERE extnamespace = %(ns)s",
    ),
]

# COMMENT ON targets, by pg_identify_object's type (functions' comments: _function).
_COMMENT_KINDS = {
    "table": "TABLE",
    "table column": "COLUMN",
    "index": "INDEX",
    "sequence": "SEQUENCE",
    "table constraint": "CONSTRAINT",
}


def render(conn: psycopg.Connection[Any], schema: str) -> str:
    """The text of schema.sql for `schema` (its name appears nowhere in it)."""
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    ns = {"ns": _oid(conn, schema)}
    for what, query in _UNSUPPORTED:
        found = sorted(str(row[0]) for row in conn.execute(query, ns))
        if found:
            raise UnsupportedObject(
                f"schema_dump cannot render this {what}: {', '.join(found)}; "
                "teach payment_worker/adapters/postgres/schema_dump.py to write it"
            )
    parts = [HEADER]
    comments = _comments(conn, ns)
    for oid, table in conn.execute(
        "SELECT oid, relname FROM pg_class WHERE relnamespace = %(ns)s AND relkind = 'r'"
        " ORDER BY relname",
        ns,
    ).fetchall():
        parts.append(_table(conn, oid, table, comments))
    parts.extend(_sequence(*row) for row in _sequences(conn, ns))
    parts.extend(_function(row, schema) for row in _functions(conn, ns))
    parts.extend(comments.pop("", []))
    text = "\n\n".join(parts) + "\n"
    text = text.replace(f"{schema}.", "")
    if schema in text:
        raise UnsupportedObject(f"the schema's own name ({schema}) is left in the rendering")
    return text


def _oid(conn: psycopg.Connection[Any], schema: str) -> int:
    row = conn.execute("SELECT oid FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    if row is None:
        raise PaymentWorkerError(f"schema {schema} does not exist")
    return int(row[0])


def _comments(conn: psycopg.Connection[Any], ns: dict[str, int]) -> dict[str, list[str]]:
    """COMMENT ON statements, keyed by the table they follow ('' for indexes and sequences)."""
    found: dict[str, list[str]] = {}
    rows = conn.execute(
        "SELECT o.type, o.identity, d.description FROM pg_description d"
        " CROSS JOIN LATERAL pg_identify_object(d.classoid, d.objoid, d.objsubid) o"
        " WHERE o.schema = (SELECT nspname FROM pg_namespace WHERE oid = %(ns)s)"
        " AND d.classoid <> 'pg_proc'::regclass ORDER BY o.type, o.identity",
        ns,
    ).fetchall()
    for kind, identity, text in rows:
        if kind not in _COMMENT_KINDS:
            raise UnsupportedObject(f"schema_dump cannot render a comment on a {kind}: {identity}")
        table = ""  # identities are qualified: schema.table[.column], name on schema.table
        if kind == "table":
            table = identity.rsplit(".", 1)[1]
        elif kind == "table column":
            table = identity.rsplit(".", 2)[1]
        elif kind == "table constraint":
            table = identity.rsplit(".", 1)[1]
        statement = f"COMMENT ON {_COMMENT_KINDS[kind]} {identity} IS {_literal(text)};"
        found.setdefault(table, []).append(statement)
    return found


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _table(
    conn: psycopg.Connection[Any], oid: int, name: str, comments: dict[str, list[str]]
) -> str:
    columns = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod),"
        " CASE WHEN a.attcollation <> t.typcollation THEN co.collname END,"
        " pg_get_expr(d.adbin, d.adrelid), a.attnotnull"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
        " LEFT JOIN pg_collation co ON co.oid = a.attcollation"
        " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
        " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (oid,),
    ).fetchall()
    pad = max((len(column[0]) for column in columns), default=0) + 1
    lines = []
    for column, type_, collation, default, not_null in columns:
        line = f"    {column.ljust(pad)}{type_}"
        if collation:
            line += f' COLLATE "{collation}"'
        if default is not None:
            line += f" DEFAULT {default}"
        if not_null:
            line += " NOT NULL"
        lines.append(line)
    lines.extend(
        f"    CONSTRAINT {conname} {definition}"
        for conname, definition in conn.execute(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = %s"
            " ORDER BY position(contype::text IN 'pufcx'), conname",
            (oid,),
        )
    )
    statements = [f"CREATE TABLE {name} (\n" + ",\n".join(lines) + "\n);"]
    statements.extend(
        f"{definition};"
        for (definition,) in conn.execute(
            "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE i.indrelid = %s"
            " AND NOT EXISTS (SELECT FROM pg_constraint k WHERE k.conindid = i.indexrelid)"
            " ORDER BY c.relname",
            (oid,),
        )
    )
    statements.extend(comments.pop(name, []))
    return "\n".join(statements)


def _sequences(conn: psycopg.Connection[Any], ns: dict[str, int]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT c.relname, format_type(s.seqtypid, NULL), s.seqstart, s.seqincrement,"
        " s.seqmin, s.seqmax, s.seqcache, s.seqcycle, owner.relname || '.' || a.attname"
        " FROM pg_class c JOIN pg_sequence s ON s.seqrelid = c.oid"
        " LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid"
        "  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')"
        " LEFT JOIN pg_class owner ON owner.oid = d.refobjid"
        " LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid"
        " WHERE c.relnamespace = %(ns)s AND c.relkind = 'S' ORDER BY c.relname",
        ns,
    ).fetchall()


def _sequence(
    name: str,
    type_: str,
    start: int,
    increment: int,
    minimum: int,
    maximum: int,
    cache: int,
    cycle: bool,
    owner: str | None,
) -> str:
    text = (
        f"CREATE SEQUENCE {name} AS {type_}\n    START {start} INCREMENT {increment}"
        f" MINVALUE {minimum} MAXVALUE {maximum} CACHE {cache}{' CYCLE' if cycle else ''}"
    )
    return text + (f"\n    OWNED BY {owner};" if owner else ";")


def _functions(conn: psycopg.Connection[Any], ns: dict[str, int]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT p.proname, p.prokind, pg_get_function_arguments(p.oid),"
        " pg_get_function_result(p.oid), l.lanname, p.provolatile, p.proisstrict, p.prosecdef,"
        " p.proleakproof, p.proparallel, p.procost, p.proretset, p.prorows, p.proconfig,"
        " p.prosrc, p.oid::regprocedure::text, obj_description(p.oid, 'pg_proc')"
        " FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
        " WHERE p.pronamespace = %(ns)s"
        " ORDER BY p.proname, pg_get_function_identity_arguments(p.oid)",
        ns,
    ).fetchall()


def _function(row: tuple[Any, ...], schema: str) -> str:
    (name, kind, arguments, result, language, volatility, strict, definer, leakproof, parallel,
     cost, returns_set, rows, config, body, signature, comment) = row  # fmt: skip
    keyword = "PROCEDURE" if kind == "p" else "FUNCTION"
    head = _listing(f"CREATE {keyword} {name}(", _items(arguments), ")")
    if result is not None:
        if result.startswith("TABLE(") and result.endswith(")"):
            head += "\n" + _listing("    RETURNS TABLE (", _items(result[6:-1]), "    )")
        else:
            head += f"\n    RETURNS {result}"
    volatile = {"i": "IMMUTABLE", "s": "STABLE", "v": "VOLATILE"}[volatility]
    options = [f"LANGUAGE {language}"]
    if kind != "p":
        options.append(volatile)
    options += ["STRICT"] * strict + ["SECURITY DEFINER"] * definer + ["LEAKPROOF"] * leakproof
    if parallel != "u":
        options.append({"s": "PARALLEL SAFE", "r": "PARALLEL RESTRICTED"}[parallel])
    if language in {"sql", "plpgsql"} and cost != 100:
        options.append(f"COST {cost:g}")
    if returns_set and rows != 1000:
        options.append(f"ROWS {rows:g}")
    lines = [head, "    " + " ".join(options)]
    for setting in config or []:
        key, value = setting.split("=", 1)
        # The migrations write SET search_path FROM CURRENT, which records the schema's name.
        lines.append(f"    SET {key} " + ("FROM CURRENT" if value == schema else f"= {value}"))
    tag = "$$" if "$$" not in body else "$body$"
    lines.append(f"AS {tag}{body}{tag};")
    if comment is not None:
        lines.append(f"COMMENT ON {keyword} {signature} IS {_literal(comment)};")
    return "\n".join(lines)


def _items(listing: str) -> list[str]:
    """A deparsed list split at its top-level commas (never inside parentheses or quotes)."""
    items, depth, quoted, start = [], 0, False, 0
    for at, char in enumerate(listing):
        if char in "'\"":
            quoted = not quoted
        elif not quoted and char in "([":
            depth += 1
        elif not quoted and char in ")]":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            items.append(listing[start:at].strip())
            start = at + 1
    items.append(listing[start:].strip())
    return [item for item in items if item]


def _listing(opening: str, items: list[str], closing: str) -> str:
    """`opening item, item closing` on one line when it fits, else items packed into indented
    lines that break only between items."""
    one_line = f"{opening}{', '.join(items)}{closing.strip()}"
    if len(one_line) <= WIDTH:
        return one_line
    indent = " " * (len(opening) - len(opening.lstrip()) + 4)
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + len(item) + 2 <= WIDTH:
            lines[-1] += f" {item},"
        else:
            lines.append(f"{indent}{item},")
    lines[-1] = lines[-1].removesuffix(",")
    return "\n".join([opening, *lines, closing])


def dump(url: str, schema: str) -> str:
    """schema.sql's text for an existing, migrated `schema`."""
    with psycopg.connect(url, autocommit=True) as conn:
        return render(conn, schema)


def fresh(url: str) -> str:
    """schema.sql's text for a schema migrated from nothing here (then dropped)."""
    schema = f"schema_dump_{uuid.uuid4().hex[:12]}"
    try:
        migrate(url, schema)
        return dump(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def difference(expected: str, actual: str, path: Path) -> str:
    """A unified diff from the file (`expected`) to the migrated schema (`actual`)."""
    return "".join(
        difflib.unified_diff(
            expected.splitlines(keepends=True),
            actual.splitlines(keepends=True),
            fromfile=str(path),
            tofile="the migrated schema",
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m payment_worker.adapters.postgres.schema_dump", description=__doc__
    )
    parser.add_argument(
        "--database-url", help="where to migrate a throwaway schema (PAYMENT_DATABASE_URL)"
    )
    parser.add_argument("--output", type=Path, default=default_path(), help="%(default)s")
    parser.add_argument(
        "--check", action="store_true", help="compare only: exit 1 when the file differs"
    )
    args = parser.parse_args(argv)
    url = args.database_url
    if url is None:
        from payment_worker.config import load_settings

        url = load_settings().database_url.get_secret_value()
    text = fresh(url)
    if args.check:
        written = args.output.read_text("utf-8") if args.output.exists() else ""
        if written != text:
            print(difference(written, text, args.output), end="")
            print(f"{args.output} is out of date: `{COMMAND}` writes it again", file=sys.stderr)
            return 1
        print(f"{args.output} is current")
        return 0
    args.output.write_text(text, "utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
