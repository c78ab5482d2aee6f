"""Cursor pagination whose cursors are signed, so a forged or altered cursor is a 400 that
names the parameter rather than an error deep in a query."""

from typing import Any

from django.core import signing
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.utils.urls import replace_query_param

MAX_PAGE_SIZE = 100


class SignedCursorPagination(CursorPagination):
    """Pages through a queryset in the order the view names in `cursor_ordering`.

    A view sets `cursor_ordering` (a tuple for order_by, unique at its end) after validating
    its query; the cursor records which ordering it was issued for.
    """

    page_size = 20
    max_page_size = MAX_PAGE_SIZE
    page_size_query_param = "page_size"
    page_size_query_description = f"Results per page, 1 to {MAX_PAGE_SIZE} (default 20)."
    cursor_query_description = "The `next` or `previous` link's cursor; opaque and signed."
    _salt = "marketplace.api.cursor"

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        try:
            size = int(raw)
        except ValueError:
            size = 0
        if not 1 <= size <= self.max_page_size:
            raise ValidationError(
                {
                    self.page_size_query_param: [
                        f"Must be a whole number from 1 to {self.max_page_size}."
                    ]
                }
            )
        return size

    def get_ordering(self, request: Request, queryset: Any, view: Any) -> tuple[str, ...]:
        return tuple(getattr(view, "cursor_ordering", None) or (self.ordering,))

    def _ordering_key(self) -> str:
        return ",".join(self.ordering)

    def encode_cursor(self, cursor: Cursor) -> str:
        token = signing.dumps(
            [cursor.offset, int(cursor.reverse), cursor.position, self._ordering_key()],
            salt=self._salt,
            compress=True,
        )
        return replace_query_param(self.base_url, self.cursor_query_param, token)

    def decode_cursor(self, request: Request) -> Cursor | None:
        encoded = request.query_params.get(self.cursor_query_param)
        if encoded is None:
            return None
        try:
            offset, reverse, position, ordering = signing.loads(encoded, salt=self._salt)
        except (signing.BadSignature, ValueError, TypeError):
            raise ValidationError(
                {
                    self.cursor_query_param: [
                        "Not a cursor this API issued (it was altered or made up); "
                        "start again from the first page."
                    ]
                }
            ) from None
        if ordering != self._ordering_key():
            raise ValidationError(
                {
                    self.cursor_query_param: [
                        "This cursor belongs to another ordering; keep `ordering` unchanged while "
                        "following next/previous links."
                    ]
                }
            )
        return Cursor(offset=int(offset), reverse=bool(reverse), position=position)
