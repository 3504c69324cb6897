"""Finding and masking PII and PHI in payloads before anything is kept: SSNs, emails, phone numbers,
payment card numbers (Luhn-checked), medical record numbers."""

from __future__ import annotations

import bisect
import functools
import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

# Where card numbers are looked for: a run of digits with single spaces or hyphens between them, never touching
# another digit. A card number is the whole run or a stretch of its groups (the digits between separators), so
# "order-4111111111111111" and "4111111111111111-12/29" both hold one; see `card_spans`.
_DIGIT_RUN = re.compile(r"\d(?:[ -]?\d)*")
_GROUP = re.compile(r"\d+")
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


_PLAIN = bytes(range(256)).translate(bytes.maketrans(b"0123456789", bytes(range(10))))
_DOUBLED = bytes.maketrans(b"0123456789", bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9]))  # Luhn: 2d, less 9 past 9
_ASCII_DIGITS = frozenset("0123456789")


def card_spans(text: str) -> Iterator[tuple[int, int]]:
    """Where `text` holds a Luhn-valid card number (13 to 19 digits, single spaces or hyphens between them):
    a run of digits and separators that touches no other digit, or a stretch of whole groups of such a run. From
    each group on, left to right, the longest stretch that is a card number is taken.

    Linear in the text: each group starts at most 7 candidate stretches (13 to 19 digits, and every group adds
    one at least), and each Luhn sum is a difference of two prefix sums.

    >>> [("4111111111111111-12/29"[a:b]) for a, b in card_spans("4111111111111111-12/29")]
    ['4111111111111111']
    """
    for run in _DIGIT_RUN.finditer(text):
        value = run.group()
        if len(value) < 13:
            continue
        if value.isdigit():  # no separators: the whole run or nothing
            if len(value) <= 19 and luhn_valid(value):
                yield run.span()
            continue
        groups = [g.span() for g in _GROUP.finditer(value)]
        digits = "".join(value[a:b] for a, b in groups)
        if len(digits) < 13 or not _ASCII_DIGITS.issuperset(digits):
            if 13 <= len(digits) <= 19 and luhn_valid(digits):  # other scripts' digits: the whole run only
                yield run.span()
            continue
        # Luhn doubles every second digit counted from the right end, so a stretch ending at an even index uses
        # `odd` (odd indexes doubled), one ending at an odd index uses `even`.
        plain = digits.encode().translate(_PLAIN)
        doubled = digits.encode().translate(_DOUBLED)
        odd, even = bytearray(plain), bytearray(plain)
        odd[1::2], even[0::2] = doubled[1::2], doubled[0::2]
        sums = {0: [0, *itertools.accumulate(odd)], 1: [0, *itertools.accumulate(even)]}
        starts = list(itertools.accumulate((b - a for a, b in groups), initial=0))  # digits before each group
        i, n, base = 0, len(groups), run.start()
        while i < n:
            first = starts[i]
            k = bisect.bisect_right(starts, first + 19, i + 1) - 1  # stretches i..k-1 have at most 19 digits
            while k > i and starts[k] - first >= 13:  # the longest stretch first
                last = starts[k]
                prefix = sums[(last - 1) & 1]
                if (prefix[last] - prefix[first]) % 10 == 0:
                    break
                k -= 1
            else:
                i += 1
                continue
            yield base + groups[i][0], base + groups[k - 1][1]
            i = k


def _mask_cards(text: str) -> str:
    parts, last = [], 0
    for start, end in card_spans(text):
        parts += [text[last:start], "[CARD]"]
        last = end
    return "".join([*parts, text[last:]]) if parts else text


_MASKS: tuple[Callable[[str], str], ...] = (
    functools.partial(_MRN.sub, "[MRN]"),
    _mask_cards,
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
    """`value` with every string, key and integer in it masked, and a float whose integral value is a card number;
    dicts and lists are walked."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {mask_text(str(k)): mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        masked = mask_text(str(value))  # a card number or MRN sent as a JSON number
        return masked if masked != str(value) else value
    if isinstance(value, float) and value.is_integer() and 1e12 <= abs(value) < 1e19:
        digits = str(int(abs(value)))  # a card number sent as a JSON number with a fraction, 4111111111111111.0
        return "[CARD]" if next(card_spans(digits), None) is not None else value
    return value


def contains_identifiers(text: str) -> list[str]:
    """The kinds of identifier found in `text` (for risk scoring), without masking it."""
    found = []
    if _MRN.search(text):
        found.append("mrn")
    if next(card_spans(text), None) is not None:
        found.append("card")
    if _SSN.search(text):
        found.append("ssn")
    return found
