"""authentik's pagination envelope over a bounded window of rows, so no list request scans millions of rows."""

from functools import cached_property
from typing import Any

from django.core.paginator import Paginator as DjangoPaginator
from rest_framework import exceptions
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response

# Page numbers reach the first MAX_PAGINATED_ROWS rows of a result, and `count` counts up to there.
MAX_PAGINATED_ROWS = 10_000


class BoundedPaginator(DjangoPaginator):
    """Django's paginator whose ``count`` stops at ``MAX_PAGINATED_ROWS``.

    Counting every row of a filter that matches millions takes as long as reading them; counting at most
    ``MAX_PAGINATED_ROWS + 1`` (``SELECT count(*) FROM (... LIMIT n)``) costs at most that many index
    entries. The pages then end at that row: a page past it is "Invalid page." (404), like any page past
    the end, so an offset never grows beyond the bound either.
    """

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        if hasattr(rows, "order_by"):
            # The count needs no ordering; a sort would make the database read every match first.
            return int(rows.order_by()[:MAX_PAGINATED_ROWS].count())
        return min(len(rows), MAX_PAGINATED_ROWS)


class Pagination(PageNumberPagination):
    """authentik's envelope: numeric page links (0 when absent), counts and an autocomplete map.

    ``page_size`` must be a positive integer (400 otherwise; DRF would silently use the default), and is
    capped at ``max_page_size``. A ``page`` that is not a page of the result set is DRF's 404 "Invalid page.".
    ``count`` is exact up to ``MAX_PAGINATED_ROWS`` and that number when more rows match; pages end there.
    """

    django_paginator_class = BoundedPaginator
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request: Any) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            assert self.page_size is not None  # REST_FRAMEWORK["PAGE_SIZE"]
            return self.page_size
        # Digits only: int() would also take " 5", "+5" and "1_0". Too many digits is a ValueError too.
        try:
            size = int(raw) if raw.isascii() and raw.isdigit() else 0
        except ValueError:
            size = 0
        if size < 1:
            # The message does not quote the value (query strings can carry secrets by mistake).
            raise exceptions.ValidationError({self.page_size_query_param: ["A positive integer is required."]})
        return min(size, self.max_page_size)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] = {**parameter["schema"], "minimum": 1}
            if parameter["name"] == self.page_query_param:
                parameter["description"] = (
                    f"{parameter.get('description', 'A page number within the paginated result set.')} "
                    f"Pages reach the first {MAX_PAGINATED_ROWS} rows of a result (page x page_size <= "
                    f"{MAX_PAGINATED_ROWS}); pagination.count is exact up to {MAX_PAGINATED_ROWS} and "
                    f"{MAX_PAGINATED_ROWS} when more rows match. Narrow the filters to reach further rows."
                )
        return parameters

    def get_paginated_response(self, data: Any) -> Response:
        page = self.page
        assert page is not None  # set by paginate_queryset, which DRF always calls first
        return Response(
            {
                "pagination": {
                    "next": page.next_page_number() if page.has_next() else 0,
                    "previous": page.previous_page_number() if page.has_previous() else 0,
                    "count": page.paginator.count,
                    "current": page.number,
                    "total_pages": page.paginator.num_pages,
                    "start_index": page.start_index(),
                    "end_index": page.end_index(),
                },
                "results": data,
                "autocomplete": {},
            }
        )

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "pagination": {"$ref": "#/components/schemas/Pagination"},
                "results": schema,
                "autocomplete": {"$ref": "#/components/schemas/Autocomplete"},
            },
            "required": ["pagination", "results", "autocomplete"],
        }
