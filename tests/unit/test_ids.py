"""Ids and tokens (domain/ids.py): random version-4 UUIDs from the operating system's CSPRNG,
never repeated, not even across a fork."""

from __future__ import annotations

import copy
import os
import pickle
import random
import uuid

import pytest

from payment_worker.domain.ids import Id, new_uuid, random_uuid, token_hex


def test_random_uuid_is_a_version_4_uuid_in_canonical_text() -> None:
    """Message ids are random RFC 4122 version-4 UUIDs in canonical text, all different."""
    drawn = [random_uuid() for _ in range(5000)]

    parsed = [uuid.UUID(i) for i in drawn]
    assert all(p.version == 4 and p.variant == uuid.RFC_4122 for p in parsed)
    assert [str(p) for p in parsed] == drawn
    assert len(set(drawn)) == len(drawn)


def test_new_uuid_is_a_random_version_4_uuid() -> None:
    """Payment and event ids: version-4 UUIDs, all different."""
    drawn = [new_uuid() for _ in range(5000)]

    assert all(i.version == 4 and i.variant == uuid.RFC_4122 for i in drawn)
    assert len(set(drawn)) == len(drawn)


def test_ids_do_not_come_from_the_random_module() -> None:
    """Seeding Python's `random` (Mersenne Twister, predictable from its output) changes
    nothing: the same seed twice gives two different ids."""
    random.seed(42)
    first = random_uuid()
    random.seed(42)
    assert random_uuid() != first


def test_ids_are_read_from_os_urandom(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bytes behind an id are os.urandom's: with os.urandom replaced, the ids follow it."""
    monkeypatch.setattr(os, "urandom", lambda n: b"\xab" * n)
    assert token_hex(4) == "abababab"
    assert new_uuid() == uuid.UUID("abababab-abab-4bab-abab-abababababab")
    assert random_uuid() == "abababab-abab-4bab-abab-abababababab"


def test_ids_are_the_version_4_uuids_of_their_random_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    """new_uuid and random_uuid set the version and variant bits as uuid.UUID(bytes=...,
    version=4) does, and keep every other bit as drawn, for many drawn byte strings."""
    for _ in range(2000):
        drawn = bytes(random.getrandbits(8) for _ in range(16))
        monkeypatch.setattr(os, "urandom", lambda n, drawn=drawn: drawn[:n])
        expected = uuid.UUID(bytes=drawn, version=4)
        made = new_uuid()
        assert made == expected and made.fields == expected.fields
        assert made.is_safe is uuid.SafeUUID.unknown and str(made) == str(expected)
        assert random_uuid() == str(expected)


@pytest.mark.parametrize(
    "text",
    [
        "0f14d0ab-9605-4a62-a9e4-5ed26688389b",
        "0F14D0AB-9605-4A62-A9E4-5ED26688389B",
        "{0f14d0ab-9605-4a62-a9e4-5ed26688389b}",
        "0f14d0ab96054a62a9e45ed26688389b",
    ],
)
def test_an_id_is_the_uuid_of_its_value_and_keeps_its_canonical_text(text: str) -> None:
    """An Id equals and hashes as the uuid.UUID of the same value (sets, dict keys, the
    database's answers), gives the canonical text each time, stays immutable, and survives a
    copy and a pickle."""
    plain, kept = uuid.UUID(text), Id(text)
    assert kept == plain and plain == kept and hash(kept) == hash(plain)
    assert {plain: 1}[kept] == 1
    assert str(kept) == str(kept) == str(plain) == "0f14d0ab-9605-4a62-a9e4-5ed26688389b"
    with pytest.raises(TypeError):
        kept.int = 1  # type: ignore[misc]
    pickled = pickle.loads(pickle.dumps(kept))  # noqa: S301 - our own bytes, just made
    for again in (copy.copy(kept), copy.deepcopy(kept), pickled):
        assert again == plain and str(again) == str(plain)


def test_tokens_are_hex_of_the_asked_length_and_all_different() -> None:
    """Lock tokens: 16 random bytes as 32 hex digits, never the same twice."""
    tokens = {token_hex(16) for _ in range(5000)}
    assert len(tokens) == 5000
    assert all(len(t) == 32 and int(t, 16) >= 0 for t in tokens)


def test_random_ids_differ_in_a_forked_child() -> None:
    """A forked process (replay's shards) draws other ids than its parent."""
    random_uuid()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit at once
        os.write(write, "".join(random_uuid() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 8 * 36).decode()
    os.waitpid(pid, 0)
    parent = "".join(random_uuid() for _ in range(8))
    assert child != parent


def test_an_id_made_from_canonical_text_is_the_uuid_it_names() -> None:
    """Id.canonical(text) is uuid.UUID(text) in every respect the code or a library reads
    (value, hash, text, fields, version, bytes, is_safe), for many random ids; it survives a
    copy and a pickle."""
    for _ in range(2000):
        plain = uuid.UUID(bytes=os.urandom(16))
        made = Id.canonical(str(plain))
        assert made is not None
        assert made == plain and hash(made) == hash(plain) and str(made) == str(plain)
        assert (made.fields, made.version, made.variant, made.bytes, made.hex) == (
            plain.fields,
            plain.version,
            plain.variant,
            plain.bytes,
            plain.hex,
        )
        assert made.is_safe is uuid.SafeUUID.unknown
    made = Id.canonical("0f14d0ab-9605-4a62-a9e4-5ed26688389b")
    assert made is not None
    assert pickle.loads(pickle.dumps(made)) == made  # noqa: S301 - our own bytes, just made
    assert copy.deepcopy(made) == made


@pytest.mark.parametrize(
    "text",
    [
        "0F14D0AB-9605-4A62-A9E4-5ED26688389B",  # upper case: parsed the general way
        "{0f14d0ab-9605-4a62-a9e4-5ed26688389b}",
        "0f14d0ab96054a62a9e45ed26688389b",
        "0f14d0ab-9605-4a62-a9e4-5ed26688389b\n",
        "0f14d0ab-9605-4a62-a9e4-5ed26688389",
        "0f14d0ab-9605-4a62-a9e4-5ed26688389g",
        "urn:uuid:0f14d0ab-9605-4a62-a9e4-5ed26688389b",
        "",
        None,
        12,
        b"0f14d0ab-9605-4a62-a9e4-5ed26688389b",
    ],
)
def test_only_canonical_text_takes_the_short_way(text: object) -> None:
    """Anything but 8-4-4-4-12 lower-case hex text is not taken by Id.canonical."""
    assert Id.canonical(text) is None
