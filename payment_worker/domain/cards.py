"""Card numbers in free text: found (contract section 4) and masked (dead letters, section 2).

A card number is 13-19 digits passing Luhn, its groups separated by at most a few of
` .-_/`, looked for after Unicode NFKC normalisation: full-width, superscript and other
decimal digits count as digits, and the separators' compatibility forms (no-break space,
full-width hyphen, ...) count as separators. Any 13-19 digit window of a longer run counts.
A canonical UUID (8-4-4-4-12 hex) is never a card number, so ids are left alone.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

MAX_SEPARATORS = 3  # "at most a few" separators between two digits of one number
MIN_DIGITS, MAX_DIGITS = 13, 19
KEEP_FIRST, KEEP_LAST = 6, 4
# The most characters one card number can cover: 19 digits, a few separators between each two.
MAX_CARD_SPAN = MAX_DIGITS + (MAX_DIGITS - 1) * MAX_SEPARATORS

# Over a shadow of the text in which every digit is `0`-`9`, every separator a space and
# every other character `x`: runs of at least 13 digits with at most 3 separators between two.
_RUN = re.compile(rf"[0-9](?:[ ]{{0,{MAX_SEPARATORS}}}[0-9]){{{MIN_DIGITS - 1},}}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_ASCII_SHADOW = str.maketrans(
    {
        **{chr(c): "x" for c in range(128)},
        **{d: d for d in "0123456789"},
        **{s: " " for s in " .-_/"},
    }
)


@lru_cache(maxsize=4096)
def _shadow_of(char: str) -> str:
    """`0`-`9` for a character whose NFKC form is one decimal digit, a space for one whose
    NFKC form is a separator, `x` for anything else."""
    normal = unicodedata.normalize("NFKC", char)
    if len(normal) == 1:
        digit = unicodedata.decimal(normal, None)
        if digit is not None:
            return str(digit)
        if normal in " .-_/":
            return " "
    return "x"


class _ShadowTable(dict[int, str]):
    """str.translate's table for any text: ASCII filled in, other characters classified on
    first sight and kept (up to a bound, so hostile text cannot grow it without end). One
    translate in C instead of a Python step per character."""

    LIMIT = 65536

    def __missing__(self, code: int) -> str:
        shadow = _shadow_of(chr(code))
        if len(self) < self.LIMIT:
            self[code] = shadow
        return shadow


_SHADOW = _ShadowTable(_ASCII_SHADOW)


def _shadow(text: str) -> str:
    """The text with each character classified (same length, so spans map back)."""
    shadow = text.translate(_ASCII_SHADOW if text.isascii() else _SHADOW)
    # UUIDs are ids, not card numbers: their digits are taken out of the search (the pieces
    # joined once: cutting and gluing the whole shadow per UUID was quadratic).
    pieces, kept = [], 0
    for match in _UUID.finditer(text):
        start, end = match.span()
        pieces += [shadow[kept:start], "x" * (end - start)]
        kept = end
    return "".join([*pieces, shadow[kept:]]) if pieces else shadow


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Luhn over every 13-19 digit window at once, in time linear in the run's length. A window
# passes when its Luhn sum is a multiple of ten; the digits doubled are those an odd distance
# from the window's last digit, so with `lanes` holding each digit's share for windows ending
# on an even (or odd) index, a window's sum is the sum of its lanes. The lanes are the bytes
# of one integer, and shifting-and-adding that integer sums every window of one length in each
# byte (at most 19 x 9 = 171: no byte carries into the next): a few whole-integer operations
# per length instead of a Python loop per window (2.8 s for 200,000 digits).
_PLAIN = bytes.maketrans(b"0123456789", bytes(range(10)))
_DOUBLED = bytes.maketrans(b"0123456789", bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9]))
_MULTIPLE_OF_TEN = bytes(ord("y") if i % 10 == 0 else ord("n") for i in range(256))
_NOT_ASCII_DIGITS = bytes(c for c in range(256) if not 0x30 <= c <= 0x39)


def _looks_like_a_card(digits: str) -> bool:
    """Some 13-19 digit window of the run (ASCII digits) passes Luhn."""
    n = len(digits)
    if n < MIN_DIGITS:
        return False
    raw = digits.encode("ascii")
    plain, doubled = raw.translate(_PLAIN), raw.translate(_DOUBLED)
    for end_parity in (0, 1):
        lanes = bytearray(plain)
        lanes[1 - end_parity :: 2] = doubled[1 - end_parity :: 2]
        one = int.from_bytes(lanes, "little")
        two = one + (one >> 8)
        four = two + (two >> 16)
        eight = four + (four >> 32)
        sums = eight + (four >> 64) + (one >> 96)  # byte i: the sum of lanes i..i+12
        for length in range(MIN_DIGITS, min(MAX_DIGITS, n) + 1):
            if length > MIN_DIGITS:
                sums += one >> (8 * (length - 1))
            first = (end_parity - length + 1) % 2  # windows that end on an index of this parity
            tens = sums.to_bytes(n, "little").translate(_MULTIPLE_OF_TEN)
            if b"y" in tens[first : n - length + 1 : 2]:
                return True
    return False


def _card_runs(text: str) -> list[list[int]]:
    """The positions of the digits of each run in `text` that looks like a card number."""
    if text.isascii() and (
        len(text.encode("ascii").translate(None, _NOT_ASCII_DIGITS)) < MIN_DIGITS
        or (len(text) == 36 and _UUID.fullmatch(text))
    ):
        return []  # the common cases: too few digits, or an id
    shadow = _shadow(text)
    runs = []
    for match in _RUN.finditer(shadow):
        if _looks_like_a_card(match.group().replace(" ", "")):
            start = match.start()
            runs.append([start + i for i, c in enumerate(match.group()) if c != " "])
    return runs


def redacted_prefix(text: str, limit: int) -> str:
    """The first `limit` characters of `text`, card numbers masked: searched `MAX_CARD_SPAN`
    past the cut, so that no digit kept belongs to a number the cut would hide. The work is
    bounded by `limit` whatever the length of `text` (a field is capped before it is
    searched)."""
    return mask_card_numbers(text[: limit + MAX_CARD_SPAN])[0][:limit]


def contains_card_number(text: str) -> bool:
    """True when `text` holds something that looks like a card number."""
    return bool(_card_runs(text))


def mask_card_numbers(text: str) -> tuple[str, bool]:
    """`text` with every digit of a card-like run replaced by `*`, except the run's first six
    and last four; and whether anything was masked."""
    runs = _card_runs(text)
    if not runs:
        return text, False
    chars = list(text)
    for positions in runs:
        for p in positions[KEEP_FIRST : len(positions) - KEEP_LAST]:
            chars[p] = "*"
    return "".join(chars), True


def redacted(text: str) -> str:
    """`text` with its card numbers masked (for raw input echoed in a reply)."""
    return mask_card_numbers(text)[0]


def mask_card_numbers_in_bytes(data: bytes) -> tuple[bytes, bool]:
    """As `mask_card_numbers`, on bytes read as UTF-8 where they are (anything else is kept as
    it was). A masked character becomes as many `*` as it had bytes, so the length of every
    string is unchanged and an Avro record stays well formed."""
    text = data.decode("utf-8", "surrogateescape")
    runs = _card_runs(text)
    if not runs:
        return data, False
    chars = list(text)
    for positions in runs:
        for p in positions[KEEP_FIRST : len(positions) - KEEP_LAST]:
            chars[p] = "*" * len(chars[p].encode("utf-8", "surrogateescape"))
    return "".join(chars).encode("utf-8", "surrogateescape"), True
