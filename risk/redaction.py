"""Finding and masking PII and PHI in payloads before anything is kept: SSNs, emails, phone numbers,
payment card numbers (Luhn-checked), medical record numbers."""

from __future__ import annotations

import bisect
import itertools
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
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


_PHONE = re.compile(r"(?<![\w+])(?:\+?1[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?!\d)")
_MRN = re.compile(r"\b(?:MRN|medical[ _-]?record(?:[ _-]?(?:number|no))?)[\s:#=-]*[A-Z]{0,3}\d{5,12}\b", re.I)


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment card number satisfies.

    >>> luhn_valid("4111111111111111"), luhn_valid("4111111111111112")
    (True, False)
    """
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)  # any script's decimal digit, as the patterns' \d finds them
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_PLAIN = bytes(range(256)).translate(bytes.maketrans(b"0123456789", bytes(range(10))))
_DOUBLED = bytes.maketrans(b"0123456789", bytes([0, 2, 4, 6, 8, 1, 3, 5, 7, 9]))  # Luhn: 2d, less 9 past 9


def card_spans(text: str) -> Iterator[tuple[int, int]]:
    """Where `text` holds a Luhn-valid card number (13 to 19 digits, single spaces or hyphens between them):
    a run of digits and separators that touches no other digit, or a stretch of whole groups of such a run. From
    each group on, the longest stretch that is a card number is found, and overlapping ones are joined: taking
    the first one found and moving on past it let a stretch that passed the checksum by chance, begun on a group
    before the card (an SSN, a reference number), take part of the card and leave the rest of it in clear.

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
        if len(digits) < 13:
            continue
        if not digits.isascii():  # other scripts' digits (as \d finds them), one ASCII digit each
            digits = "".join(str(unicodedata.digit(ch)) for ch in digits)
        # Luhn doubles every second digit counted from the right end, so a stretch ending at an even index uses
        # `odd` (odd indexes doubled), one ending at an odd index uses `even`.
        plain = digits.encode().translate(_PLAIN)
        doubled = digits.encode().translate(_DOUBLED)
        odd, even = bytearray(plain), bytearray(plain)
        odd[1::2], even[0::2] = doubled[1::2], doubled[0::2]
        sums = {0: [0, *itertools.accumulate(odd)], 1: [0, *itertools.accumulate(even)]}
        starts = list(itertools.accumulate((b - a for a, b in groups), initial=0))  # digits before each group
        base, found = run.start(), None
        for i, first in enumerate(starts[:-1]):
            k = bisect.bisect_right(starts, first + 19, i + 1) - 1  # stretches i..k-1 have at most 19 digits
            while k > i and starts[k] - first >= 13:  # the longest stretch first
                last = starts[k]
                prefix = sums[(last - 1) & 1]
                if (prefix[last] - prefix[first]) % 10 == 0:
                    break
                k -= 1
            else:
                continue
            start, end = base + groups[i][0], base + groups[k - 1][1]
            if found is not None and start <= found[1]:
                found = (found[0], max(found[1], end))
                continue
            if found is not None:
                yield found
            found = (start, end)
        if found is not None:
            yield found


# What each kind is found by. Every finder reads the text as given and their spans are masked together, an
# overlap as one: masked one kind after another, a kind masked first could take part of the next and leave the
# rest in clear (a number inside an address left the address's other characters; an address's local part, which
# may hold hyphens and digits, took the last group of a card just before it).
_FINDERS: tuple[tuple[str, Callable[[str], Iterable[tuple[int, int]]]], ...] = (
    ("EMAIL", lambda text: (m.span() for m in emails(text))),
    ("MRN", lambda text: (m.span() for m in _MRN.finditer(text))),
    ("SSN", lambda text: (m.span() for m in _SSN.finditer(text))),
    ("PHONE", lambda text: (m.span() for m in _PHONE.finditer(text))),
    ("CARD", card_spans),
)


def mask_text(text: str) -> str:
    """Replace every identifier found in `text` by its kind in brackets; identifiers that overlap by the kinds
    of all of them, as [CARD+EMAIL].

    >>> mask_text("Pt MRN: 00123456, SSN 123-45-6789, mail jo@example.org, card 4111 1111 1111 1111")
    'Pt [MRN], SSN [SSN], mail [EMAIL], card [CARD]'
    >>> mask_text("4111 1111 1111 1111-jo.123-45-6789@example.org")
    '[CARD+EMAIL+SSN]'
    """
    found = sorted((start, end, kind) for kind, spans in _FINDERS for start, end in spans(text) if end > start)
    if not found:
        return text
    merged: list[tuple[int, int, list[str]]] = []
    for start, end, kind in found:
        if merged and start < merged[-1][1]:
            last_start, last_end, kinds = merged[-1]
            merged[-1] = (last_start, max(last_end, end), kinds if kind in kinds else [*kinds, kind])
        else:
            merged.append((start, end, [kind]))
    parts, at = [], 0
    for start, end, kinds in merged:
        parts += [text[at:start], f"[{'+'.join(kinds)}]"]
        at = end
    return "".join([*parts, text[at:]])


def mask(value: Any) -> Any:
    """`value` with every string, key and integer in it masked, and a float whose integral value is a card number;
    dicts and lists are walked."""
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        kept: dict[str, Any] = {}
        for k, v in value.items():
            key = base = mask_text(str(k))
            # Keys that mask alike ("[EMAIL]") stay apart, or all but the last one's value would be lost.
            alike = (f"{base} ({n})" for n in itertools.count(2))
            while key in kept:
                key = next(alike)
            kept[key] = mask(v)
        return kept
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        masked = mask_text(str(value))  # a card number or MRN sent as a JSON number
        return masked if masked != str(value) else value
    if isinstance(value, float) and value.is_integer() and 1e12 <= abs(value) < 1e19:
        if abs(value) > 2**53:  # rounded already: its digits cannot be checked, and may be most of a card's
            return "[CARD]"
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
