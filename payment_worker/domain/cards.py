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


def _shadow(text: str) -> str:
    """The text with each character classified (same length, so spans map back)."""
    if text.isascii():
        shadow = text.translate(_ASCII_SHADOW)
    else:
        shadow = "".join(
            _shadow_of(c) if ord(c) > 127 else c.translate(_ASCII_SHADOW) for c in text
        )
    # UUIDs are ids, not card numbers: their digits are taken out of the search.
    for match in _UUID.finditer(text):
        start, end = match.span()
        shadow = shadow[:start] + "x" * (end - start) + shadow[end:]
    return shadow


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


def _looks_like_a_card(digits: str) -> bool:
    """Some 13-19 digit window of the run passes Luhn."""
    for length in range(MIN_DIGITS, min(MAX_DIGITS, len(digits)) + 1):
        for start in range(0, len(digits) - length + 1):
            if luhn_ok(digits[start : start + length]):
                return True
    return False


def _card_runs(text: str) -> list[list[int]]:
    """The positions of the digits of each run in `text` that looks like a card number."""
    if text.isascii() and (
        sum(c.isdigit() for c in text) < MIN_DIGITS or (len(text) == 36 and _UUID.fullmatch(text))
    ):
        return []  # the common cases: too few digits, or an id
    shadow = _shadow(text)
    runs = []
    for match in _RUN.finditer(shadow):
        positions = [match.start() + i for i, c in enumerate(match.group()) if c != " "]
        if _looks_like_a_card("".join(shadow[p] for p in positions)):
            runs.append(positions)
    return runs


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
