"""The API's JSON parser: DRF's, with a memory and a depth that cannot take the process down.

Memory: Python's decoder makes an object of every value, so a body's shape, not its
size, decides what parsing it costs (``[{},{},...]`` takes 24x its bytes; a 64 MiB
batch body of them would take 1.5 GB in a 768 MiB pod). The body is read as bytes,
its cost counted on them (``switchyard.json_cost``) and compared with
``SWITCHYARD_MAX_JSON_MEMORY_BYTES`` before a single object is built: over it, the
answer is 400 naming ``body`` with the count and the limit. The raw bytes are let go
once decoded, so bytes, text and objects are never all held at once.

Depth: Python's JSON decoder recurses once per nesting level and raises
``RecursionError`` past the interpreter's limit (about 1,000 levels), which DRF's
parser does not catch: a body of 5,000 nested arrays answered 500. Here any depth
the decoder cannot take is the caller's error (400), like any other malformed body.
Run by the web.
"""
from __future__ import annotations

import json

from django.conf import settings
from rest_framework import parsers
from rest_framework.exceptions import ParseError, ValidationError
from rest_framework.utils.json import strict_constant

from switchyard.json_cost import json_cost

_MIB = 1024 * 1024


def _too_costly(cost, budget: int) -> ValidationError:
    message = (
        f"this JSON body of {cost.size:,} bytes holds {cost.values:,} values and keys, "
        f"which would take about {cost.peak // _MIB:,} MiB of memory to parse; the limit is "
        f"{budget // _MIB:,} MiB (SWITCHYARD_MAX_JSON_MEMORY_BYTES), about "
        f"{cost.values_allowed(budget):,} values and keys in a body of this size: send "
        "fewer items per request")
    return ValidationError({"body": [message]})


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        body = stream.read() if stream is not None else b""
        budget = settings.SWITCHYARD_MAX_JSON_MEMORY_BYTES
        cost = json_cost(body, budget=budget)
        if cost.peak > budget:
            raise _too_costly(cost, budget)
        parse_constant = strict_constant if self.strict else None
        try:
            text = body.decode(encoding)
            del body  # the objects are built from the text alone
            return json.loads(text, parse_constant=parse_constant)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply (at most about 900 "
                             "levels of arrays and objects)") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
