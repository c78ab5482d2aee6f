from rest_framework.pagination import CursorPagination


class NewestFirst(CursorPagination):
    """Newest first, as the platform's list; a cursor needs no COUNT(*) per page."""

    ordering = ("-date_created", "-id")
    page_size_query_param = "page_size"
    max_page_size = 100
