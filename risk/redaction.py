"""Finding and masking PII and PHI in payloads before anything is kept: SSNs, emails, phone numbers,
payment card numbers (Luhn-checked), medical record numbers."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
# An email address. Searched for plainly, a long run of its local-part characters with no address in it (a
# token, base64) is scanned again from each of its characters, in time quadratic in the run's length (a
# megabyte payload: minutes). So a search starts only where such a run starts (the lookbehind): the first
# match is the plain pattern's first match, and `emails` finds the rest as the plain pattern's finditer does.
_EMAIL_PLAIN = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
EMAIL_PATTERN = r"(?<![\w.+-])" + _EMAIL_PLAIN.pattern
_EMAIL = re.compile(EMAIL_PATTERN)


def emails(text: str) -> Iterator[re.Match[str]]:
    """The email addresses `_EMAIL_PLAIN.finditer(text)` finds, in time linear in the text.

    After a match, the plain pattern resumes where it ended, which may be inside a run ("a@b.example+c@d.example"):
    an address glued on there is found with one anchored match. Any other address starts a run.

    >>> [m.group() for m in emails("to a@b.example+c@d.example, e@f.example")]
    ['a@b.example', '+c@d.example', 'e@f.example']
    """
    at = 0
    while True:
        found = _EMAIL_PLAIN.match(text, at) if at else None  # glued on: it starts before anything found below
        if found is None:
            found = _EMAIL.search(text, at)
        if found is None:
            return
        yield found
        at = found.end()


def _mask_emails(text: str) -> str:
    parts, last = [], 0
    for m in emails(text):
        parts += [text[last : m.start()], "[EMAIL]"]
        last = m.end()
    return "".join([*parts, text[last:]])


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


_MASKS: tuple[Callable[[str], str], ...] = (
    functools.partial(_MRN.sub, "[MRN]"),
    functools.partial(_CARD.sub, _mask_card),
    functools.partial(_SSN.sub, "[SSN]"),
    _mask_emails,
    functools.partial(_PHONE.sub, "[PHONE]"),
)


def mask_text(text: str) -> str:
    """Replace every identifier found in `text` by its kind in brackets.

    >>> mask_text("Pt MRN: 00123456, SSN 123-45-6789, mail jo@example.org, card 4111 1111 1111 1111")
    'Pt [MRN], SSN [SSN], mail [EMAIL], card [CARD]'
    """
    for masked in _MASKS:
        text = masked(text)
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
