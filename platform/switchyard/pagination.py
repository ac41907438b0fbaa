"""Cursor pagination whose bad cursor is the caller's mistake (400), not a missing page."""
from __future__ import annotations

from rest_framework import pagination
from rest_framework.exceptions import NotFound, ValidationError


class CursorPagination(pagination.CursorPagination):
    """DRF answers an undecodable ``cursor`` with 404, as if the list did not exist;
    the list is there and the query parameter is wrong, so say which (400, ``cursor``)."""

    def decode_cursor(self, request):
        try:
            return super().decode_cursor(request)
        except NotFound as exc:
            raise ValidationError({self.cursor_query_param: [
                "invalid cursor; use the next or previous link of a page"]}) from exc
