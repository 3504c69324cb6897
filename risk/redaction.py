"""Finding and masking PII and PHI in payloads before anything is kept: SSNs, emails, phone numbers,
payment card numbers (Luhn-checked), medical record numbers."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_PHONE = re.compile(r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?!\d)")
_MRN = re.compile(r"\b(?:MRN|medical[ _-]?record(?:[ _-]?(?:number|no))?)[\s:#=-]*[A-Z]{0,3}\d{5,12}\b", re.I)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else match.group()


_MASKS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    (_MRN, "[MRN]"),
    (_CARD, _mask_card),
    (_SSN, "[SSN]"),
    (_EMAIL, "[EMAIL]"),
    (_PHONE, "[PHONE]"),
)


def mask_text(text: str) -> str:
    """Replace every identifier found in `text` by its kind in brackets.

    >>> mask_text("Pt MRN: 00123456, SSN 123-45-6789, mail jo@example.org, card 4111 1111 1111 1111")
    'Pt [MRN], SSN [SSN], mail [EMAIL], card [CARD]'
    """
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


def mask(value: Any) -> Any:
    """`value` with every string, key and integer in it masked; dicts and lists are walked."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {mask_text(str(k)): mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        masked = mask_text(str(value))  # a card number or MRN sent as a JSON number
        return masked if masked != str(value) else value
    return value


def contains_identifiers(text: str) -> list[str]:
    """The kinds of identifier found in `text` (for risk scoring), without masking it."""
    found = []
    if _MRN.search(text):
        found.append("mrn")
    if any(luhn_valid(re.sub(r"\D", "", m.group())) for m in _CARD.finditer(text)):
        found.append("card")
    if _SSN.search(text):
        found.append("ssn")
    return found
