"""Card numbers in free text (domain/cards.py): found in every spelling the contract names
(section 4), and masked in dead letters keeping the first six and last four digits (section 2)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from payment_worker.domain import cards
from payment_worker.domain.cards import (
    MAX_CARD_SPAN,
    contains_card_number,
    luhn_ok,
    mask_card_numbers,
    mask_card_numbers_in_bytes,
    redacted_prefix,
)
from tests.strategies import CARD_NUMBERS, spell_card_number

FULL_WIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111111",
        "visa 4111.1111.1111.1111",
        "4111  1111  1111  1111",
        "4111_1111_1111_1111",
        "4111/1111/1111/1111",
        "4111 - 1111 - 1111 - 1111",
        "4111\u00a01111\u00a01111\u00a01111",  # no-break spaces: NFKC makes them spaces
        "4111－1111－1111－1111",  # full-width hyphens
        "4111111111111111".translate(FULL_WIDTH),
        "card:" + "4111111111111111".translate(FULL_WIDTH) + ";",
        "٤١١١١١١١١١١١١١١١",  # Arabic-Indic digits are digits
        "4222222222222",  # 13 digits
        "4000000000000000006",  # 19 digits
        "x94111111111111111y",  # inside a longer run of digits
    ],
)
def test_card_numbers_are_found_in_every_spelling(text: str) -> None:
    """After NFKC, 13-19 digits with at most a few of ` .-_/` between groups, passing Luhn."""
    assert contains_card_number(text)


@pytest.mark.parametrize(
    "text",
    [
        "credit_card",
        "123456789012",  # 12 digits
        "1234567890123",  # 13 digits failing Luhn
        "4111 1111 1111 111",  # 15 digits, no window passes Luhn
        "4111    1111 1111 1111",  # four separators: two numbers, each too short
        "4111a1111b1111c1111",
        "12345678-1234-1234-1234-123456789012",  # a UUID is an id, not a card number
    ],
)
def test_text_without_a_card_number_passes(text: str) -> None:
    """Too few digits, Luhn failing, digits split by other characters, a UUID: no card."""
    assert not contains_card_number(text)


def test_masking_keeps_the_first_six_and_last_four_digits_and_the_separators() -> None:
    """Every digit of the run but the first six and the last four becomes `*`."""
    assert mask_card_numbers("pay 4111.1111.1111.1111 now") == ("pay 4111.11**.****.1111 now", True)
    assert mask_card_numbers("no card here") == ("no card here", False)


def test_masking_bytes_keeps_every_string_the_same_length() -> None:
    """A multi-byte digit becomes as many `*` as it had bytes: the Avro length prefixes stay
    right, and bytes that are not UTF-8 are kept as they were."""
    text = "x" + "4111111111111111".translate(FULL_WIDTH) + "y"
    data = b"\xff\x00" + text.encode() + b"\xfe"
    masked, changed = mask_card_numbers_in_bytes(data)
    assert changed and len(masked) == len(data)
    assert masked.startswith(b"\xff\x00x") and masked.endswith(b"y\xfe")
    assert not contains_card_number(masked.decode("utf-8", "surrogateescape"))
    assert masked.decode("utf-8", "surrogateescape").count("*") == 6 * 3


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CARD_NUMBERS), st.data())
def test_every_generated_spelling_is_found_and_masked(card: str, data: st.DataObject) -> None:
    """Whatever the spelling (separators, full-width or other digits, text around it), the
    number is found, and after masking no card number is left."""
    spelled = data.draw(spell_card_number(card))
    text = data.draw(st.text(max_size=5)) + " " + spelled + " " + data.draw(st.text(max_size=5))
    assert contains_card_number(text)
    masked, changed = mask_card_numbers(text)
    assert changed and not contains_card_number(masked)
    raw, changed_bytes = mask_card_numbers_in_bytes(text.encode())
    assert changed_bytes and not contains_card_number(raw.decode())


def test_luhn() -> None:
    """The Luhn check on the classic test numbers."""
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")


def _any_window_passes_luhn(digits: str) -> bool:
    """The search as first written: every 13-19 digit window, one Luhn check each (quadratic
    in practice, kept here as the reference the linear search must agree with)."""
    return any(
        luhn_ok(digits[start : start + length])
        for length in range(13, min(19, len(digits)) + 1)
        for start in range(len(digits) - length + 1)
    )


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="0123456789", max_size=60) | st.text(alphabet="0129", max_size=60))
def test_the_linear_search_answers_as_the_window_by_window_search(digits: str) -> None:
    """For any run of digits, some 13-19 digit window passes Luhn by the linear search exactly
    when one does by checking every window on its own."""
    assert cards._looks_like_a_card(digits) == _any_window_passes_luhn(digits)


@pytest.mark.parametrize("length", [200_000, 200_001])
def test_a_long_run_without_a_passing_window_is_searched_to_its_end(length: int) -> None:
    """A run of ones has no window passing Luhn (sums 19, 21, 22, 24, 25, 27, 28); a card at
    the very end of 200,000 of them is still found, and masked."""
    run = "1" * length
    assert not contains_card_number(run)
    assert contains_card_number(run + "4111111111111111")
    masked, changed = mask_card_numbers(run + "4111111111111111")
    assert changed and masked.count("*") == len(run) + 16 - 10


def test_a_capped_echo_keeps_no_digit_of_a_number_the_cut_would_hide() -> None:
    """The first `limit` characters are kept; a card number crossing the cut is found in the
    whole (searched past the cut) and masked, so its unmasked digits are the first six only."""
    text = "x" * 10 + "4111 1111 1111 1111" + "y" * 1000
    kept = redacted_prefix(text, 20)
    assert kept == "x" * 10 + "4111 11** " and len(kept) == 20
    assert redacted_prefix("id-123", 20) == "id-123"


def test_a_capped_echo_searches_a_bounded_part_of_a_huge_field() -> None:
    """Whatever the field's length, what is searched is at most the cap plus one card's span:
    a card number far past the cut cannot change what is kept."""
    run = "1" * 1_000_000
    assert redacted_prefix(run, 255) == "1" * 255
    assert redacted_prefix(run + "4111111111111111", 255) == "1" * 255
    assert MAX_CARD_SPAN == 19 + 18 * 3
