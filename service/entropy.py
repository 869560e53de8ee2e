"""How many bits of randomness a secret (an operator-chosen token) can hold at most.

`estimated_entropy_bits` charges each character what an attacker who knows the usual
shortcuts would have to guess: `log2(alphabet)` bits for a fresh character, where the
alphabet is the union of the character classes the secret uses (hex digits, digits,
lower case, upper case, `-_`, other symbols); 1 bit for a character that continues an
arithmetic run (`abc`, `0123`, `aaaa`, `9753`); and for a repeat of an earlier substring
of at least 3 characters only where it starts and how long it is (LZ77). So
`secrets.token_urlsafe(32)` scores ~250 bits, `0123456789abcdef0123456789abcdef0123456789a`
~40 and `hps_` + `ab` * 30 ~30. It is an upper bound on what a secret holds (it knows no
dictionary), so it refuses what is certainly weak, not everything that is.
"""

from __future__ import annotations

import math
import string

_HEX_LOWER = frozenset("0123456789abcdef")
_HEX_UPPER = frozenset("0123456789ABCDEF")
_CLASSES: tuple[tuple[frozenset[str], int], ...] = (
    (frozenset(string.digits), 10),
    (frozenset(string.ascii_lowercase), 26),
    (frozenset(string.ascii_uppercase), 26),
    (frozenset("-_"), 2),  # URL-safe base64's two symbols
    (frozenset(string.punctuation + " ") - frozenset("-_"), 31),
)
# Characters outside printable ASCII: counted as a class of this many.
_OTHER_CLASS = 128
_MIN_REPEAT = 3


def alphabet_size(text: str) -> int:
    """The size of the smallest usual alphabet that `text` is drawn from."""
    chars = set(text)
    if chars <= _HEX_LOWER or chars <= _HEX_UPPER:
        return 16 if chars - frozenset(string.digits) else 10
    size = sum(count for members, count in _CLASSES if chars & members)
    if any(not any(c in members for members, _ in _CLASSES) for c in chars):
        size += _OTHER_CLASS
    return max(size, 2)


def _longest_repeat(text: str, i: int) -> int:
    """The longest prefix of text[i:] that also starts somewhere before i (it may overlap i)."""
    length = 0
    while i + length < len(text) and text.find(text[i : i + length + 1], 0, i + length) != -1:
        length += 1
    return length


def estimated_entropy_bits(text: str) -> float:
    """Bits an attacker must guess for `text`, at most (see the module docstring)."""
    if not text:
        return 0.0
    per_char = math.log2(alphabet_size(text))
    bits = 0.0
    i = 0
    while i < len(text):
        repeat = _longest_repeat(text, i) if i else 0
        if repeat >= _MIN_REPEAT:
            cost = 1 + math.log2(i) + math.log2(repeat)  # a flag, where it starts, how long
            if cost < repeat * per_char:
                bits += cost
                i += repeat
                continue
        if i >= 2 and ord(text[i]) - ord(text[i - 1]) == ord(text[i - 1]) - ord(text[i - 2]):
            bits += 1  # continues a run: abc, 0123, zzz
        else:
            bits += per_char
        i += 1
    return bits
