"""What a JSON body will cost in memory once parsed, counted on its bytes first.

Run by the web (``switchyard.parsers``). Python's decoder makes an object of every
value: ``{}`` is 3 bytes of a body (with its comma) and 72 bytes of memory, so the
shape of a body, not its size, decides what parsing it costs (24x its bytes for
``[{},{}...]``, 36x for ``[[[[]]]],...``). The standard library has no streaming
parser, so the cost is bounded before ``json.loads`` from two things counted on the
raw bytes at C speed:

* ``values``: JSON values and keys, ``1 + commas + colons + "{" + "["`` outside
  strings (an empty object or array counts twice). Each costs at most
  ``BYTES_PER_VALUE`` (96; measured at most 81, for ``[{"a":"bc"},...]``) plus its
  characters;
* the width of the text: 1 byte per character for ASCII or Latin-1, 2 beyond it, 4
  with a character beyond U+FFFF (one emoji makes the whole decoded text 4 bytes
  a character; a ``\\ud83d`` escape does it to the string it is in). A string
  with an escape or a non-ASCII character is built by a growing buffer, which may
  hold half as much again before it is trimmed.

The count is first taken with no regard for strings (an upper bound, almost free);
only if that is over budget are the strings skipped for the exact count, a
mebibyte at a time, stopping as soon as the budget is exceeded.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

#: Memory of one parsed JSON value or key at most, characters aside (bytes).
BYTES_PER_VALUE = 96
_COUNTED = b",:{["
#: Every byte but a quote and the counted ones: deleted before the quotes are split.
_NOT_COUNTED = bytes(b for b in range(256) if b not in b'"' + _COUNTED)
_CHUNK = 1 << 20
_BACKSLASH = 0x5C
#: UTF-8 lead bytes of characters from U+0100 (2 bytes in a str) and beyond U+FFFF (4).
_WIDE_RAW = re.compile(rb"[\xc4-\xef]")
_ASTRAL_RAW = re.compile(rb"[\xf0-\xf4]")
_WIDE_ESCAPE = re.compile(rb"\\u(?!00)[0-9a-fA-F]{4}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")


@dataclass(frozen=True)
class JsonCost:
    """A body's size, its JSON values and keys, and the bytes per character of its
    decoded text and of its strings."""

    size: int
    values: int
    text_width: int
    #: Bytes per character of the strings as they are built (growing buffers included).
    string_width: float

    @property
    def peak(self) -> int:
        """Peak bytes of parsing: the body with its decoded text, then the text with
        the objects (strings at most as many characters as the body)."""
        n = self.size
        return int(max(n + self.text_width * n, self.text_width * n + self.string_width * n
                       + BYTES_PER_VALUE * self.values))

    def values_allowed(self, budget: int) -> int:
        """How many values and keys a body of this size and text may hold."""
        n = self.size
        return max(0, int(budget - self.text_width * n - self.string_width * n)
                   // BYTES_PER_VALUE)


def _widths(body: bytes) -> tuple[int, float]:
    ascii_only = body.isascii()
    if ascii_only:
        text = 1
    else:
        text = 4 if _ASTRAL_RAW.search(body) else 2 if _WIDE_RAW.search(body) else 1
    strings = text
    if strings < 4 and b"\\u" in body:
        if _SURROGATE_ESCAPE.search(body):
            strings = 4
        elif strings < 2 and _WIDE_ESCAPE.search(body):
            strings = 2
    if ascii_only and b"\\" not in body:
        return text, strings  # every string a slice of the text, of its exact size
    return text, strings * 1.5


def values_upper_bound(body: bytes) -> int:
    """Values and keys of ``body``, counting the characters inside strings as well."""
    return 1 + sum(body.count(bytes((char,))) for char in _COUNTED)


def values_exact(body: bytes, *, stop_above: int | None = None) -> int:
    """Values and keys of ``body`` (a valid JSON text; for anything else, a number the
    decoder will refuse anyway), strings skipped; counting stops past ``stop_above``."""
    values, inside, start, size = 1, False, 0, len(body)
    while start < size:
        end = min(size, start + _CHUNK)
        while end < size and body[end - 1] == _BACKSLASH:  # never split an escape
            end += 1
        chunk = body[start:end]
        if b"\\" in chunk:  # escaped backslashes, then escaped quotes: no quote is left
            chunk = chunk.replace(b"\\\\", b"").replace(b'\\"', b"")
        parts = chunk.translate(None, _NOT_COUNTED).split(b'"')
        values += len(b"".join(parts[1 if inside else 0::2]))
        inside ^= (len(parts) - 1) & 1
        if stop_above is not None and values > stop_above:
            return values
        start = end
    return values


def json_cost(body: bytes, *, budget: int) -> JsonCost:
    """What parsing ``body`` costs; exact enough to compare with ``budget`` (bytes):
    when the cheap upper bound fits, that is the answer."""
    text_width, string_width = _widths(body)
    cost = JsonCost(size=len(body), values=values_upper_bound(body), text_width=text_width,
                    string_width=string_width)
    if cost.peak <= budget:
        return cost
    exact = values_exact(body, stop_above=cost.values_allowed(budget))
    return JsonCost(size=len(body), values=exact, text_width=text_width,
                    string_width=string_width)
