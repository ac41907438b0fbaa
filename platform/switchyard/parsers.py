"""The API's JSON parser: DRF's, with a depth that cannot take the process down.

Python's JSON decoder recurses once per nesting level and raises ``RecursionError``
past the interpreter's limit (about 1,000 levels), which DRF's parser does not catch:
a body of 5,000 nested arrays answered 500. Here any depth the decoder cannot take is
the caller's error (400), like any other malformed body. Run by the web.
"""
from __future__ import annotations

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply (at most about 900 "
                             "levels of arrays and objects)") from None
