"""authentik's pagination envelope over a bounded window of rows, so no list request scans millions of rows."""

import json
from functools import cached_property
from typing import Any

from django.core.exceptions import EmptyResultSet
from django.core.paginator import InvalidPage, Page
from django.core.paginator import Paginator as DjangoPaginator
from django.db import connections
from django.db.models import QuerySet
from rest_framework import exceptions
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response

# Pages reach the first MAX_PAGINATED_ROWS rows of a result. `count` is exact up to EXACT_COUNT_LIMIT;
# beyond, it is the database's estimate of the matching rows (PostgreSQL), or MAX_PAGINATED_ROWS.
MAX_PAGINATED_ROWS = 10_000
EXACT_COUNT_LIMIT = 1_000


def _estimated_rows(rows: QuerySet[Any]) -> int | None:
    """PostgreSQL's estimate of how many rows ``rows`` matches (its planner's, from table statistics).

    The plan explained is that of the first match (``LIMIT 1``), and the estimate is its input's row count:
    the same number as the plan of every match would give, but a plan whose cost is that of one row does
    not reach ``jit_above_cost``. Explaining the plan of every match of a frequent filter (millions of
    rows) made PostgreSQL compile it with JIT, which it does even for a plan it only explains (about 10 ms).
    """
    if connections[rows.db].vendor != "postgresql":
        return None
    plan = json.loads(rows.order_by()[:1].explain(format="json"))[0]["Plan"]
    matches = plan["Plans"][0] if plan["Node Type"] == "Limit" and plan.get("Plans") else plan
    return int(matches["Plan Rows"])


class BoundedPaginator(DjangoPaginator):
    """Django's paginator that never counts or skips more than a bounded number of rows.

    Counting every row of a filter that matches millions takes as long as reading them. ``count`` counts
    at most ``EXACT_COUNT_LIMIT + 1`` rows (``SELECT count(*) FROM (... LIMIT n)``); when there are more,
    it reports the planner's estimate (at least ``EXACT_COUNT_LIMIT + 1``), which costs a plan and no row.
    ``num_pages`` counts the pages that start before row ``MAX_PAGINATED_ROWS``: a later page is "Invalid
    page." (404), like a page past the end, so no request makes the database skip more rows than that.

    ``part``, when a view sets it (through ``Pagination.count_part``), is a queryset of rows that all match
    ``object_list``, cheaper to count (a search term's matching owners or actions: an index range). It is
    counted first, up to the same bound: when it reaches the bound, so do the matches, and ``object_list``
    is not counted; the count is what counting it would have given.
    """

    part: QuerySet[Any] | None = None
    # Whether ``count`` is the planner's estimate; pages then find their end themselves (``page``).
    estimated = False

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        if not isinstance(rows, QuerySet):
            return len(rows)
        limit = EXACT_COUNT_LIMIT + 1
        if self.part is not None and BoundedPaginator._count_up_to(self, self.part, limit) >= limit:
            counted = limit  # no key is kept (KeyedPaginator): neither would counting the rows keep any
        else:
            counted = self._count_up_to(rows, limit)
        if counted <= EXACT_COUNT_LIMIT:
            return counted
        estimate = _estimated_rows(rows)
        if estimate is None:
            return min(rows.order_by()[:MAX_PAGINATED_ROWS].count(), MAX_PAGINATED_ROWS)
        self.estimated = True
        return max(estimate, counted)

    def _count_up_to(self, rows: QuerySet[Any], limit: int) -> int:
        """How many rows ``rows`` matches, counting no further than ``limit``."""
        # The count needs no ordering; a sort would make the database read every match first.
        return int(rows.order_by()[:limit].count())

    @cached_property
    def reachable_pages(self) -> int:
        """The pages that start before row ``MAX_PAGINATED_ROWS``."""
        return -(-MAX_PAGINATED_ROWS // self.per_page)

    @cached_property
    def num_pages(self) -> int:
        """The pages that can be reached (``reachable_pages``); for an estimated count, all of them: an estimate
        may fall short of the rows there are."""
        self.count  # noqa: B018 - computed first: it decides whether the count is an estimate
        return self.reachable_pages if self.estimated else min(super().num_pages, self.reachable_pages)

    def page(self, number: Any) -> Page:
        """Django's page; for an estimated count, the page's rows plus the first row of the next page (if any),
        which ``Pagination`` uses to tell whether there is a next page and drops from the answer.

        With an estimate, ``next`` and ``total_pages`` must not come from the estimate: one short of the
        rows would hide the last ones from a client that follows ``next``, one over would send it to empty
        pages.
        """
        number = self.validate_number(number)
        if not self.estimated:
            return super().page(number)
        bottom = (number - 1) * self.per_page
        return Page(self.object_list[bottom : bottom + self.per_page + 1], number, self)


def _plain_ordering(rows: QuerySet[Any]) -> bool:
    """Whether ``rows`` is ordered by field names only (each maybe with ``-``), as the ordering filter gives."""
    order = rows.query.order_by
    return bool(order) and all(isinstance(name, str) and name.lstrip("-") for name in order)


def _readable_by_key(rows: QuerySet[Any]) -> bool:
    """Whether ``rows``' page can be read again as "these primary keys, in this order": a plain model query
    whose ordering names fields (not annotations) and whose rows are not made distinct or combined."""
    query = rows.query
    return not (query.annotations or query.distinct or query.combinator or query.extra or query.extra_order_by)


class KeyedPaginator(BoundedPaginator):
    """``BoundedPaginator`` that finds a small result once: when the matches number at most
    ``EXACT_COUNT_LIMIT``, the count also returns their primary keys, and the page is then read by those
    keys (``pk IN (...)`` in the same ordering), without the filters.

    For lists whose filters cost much per row, such as a non-superuser's token list, which probes every
    token the caller may see (5,150 in "Scale"): the count and the page each did so (about 20 ms apiece at
    500,000 tokens); now only the count does, and the page reads the matches by key. A larger result is
    counted as ``BoundedPaginator`` does (on PostgreSQL its keys are not even sent), and its page is read as
    ``pk IN (the page's keys, by the filters, ordering and slice)``: the filters and the ordering run on
    the key and the ordering's columns only, and the page's rows are then read by key.

    The page shows the rows that matched when the count ran, with their values when the page is read: a row
    deleted in between is left out, a row that stopped or started matching in between is shown as the count
    saw it (as if the whole request had run at the count). The event table is not read this way: its
    primary key is not a unique index of its own (partitions, see events.partitions).
    """

    _keys: list[Any] | None = None
    # Fields that one index holds together with the primary key: a larger result ordered by these alone has
    # its page's keys read first, from that index (see ``page``). None by default.
    indexed_order_fields: frozenset[str] = frozenset()
    # Set (through ``Pagination.one_pass``) for rows known to be few, such as the tokens a caller without the
    # global permission sees: the count also returns the requested page's keys (``_count_with_page``).
    one_pass = False
    _wanted: int | None = None  # the first row of the requested page, while the count runs
    _page_keys: tuple[int, list[Any]] | None = None  # (first row, keys) of a page the count found

    def _count_up_to(self, rows: QuerySet[Any], limit: int) -> int:
        if not _readable_by_key(rows):
            return super()._count_up_to(rows, limit)
        window = rows.order_by().values_list("pk", flat=True)[:limit]
        db = connections[rows.db]
        if db.vendor == "postgresql" and self._wanted is not None and _plain_ordering(rows):
            return self._count_with_page(rows, limit, self._wanted)
        if db.vendor != "postgresql":
            keys = list(window)
            counted = len(keys)
        else:
            # One row: the count and, only when it is every match, their keys; a larger result costs its count
            # alone, as in BoundedPaginator, not 1,001 keys fetched to be dropped.
            try:
                sql, params = window.query.get_compiler(using=rows.db).as_sql()
            except EmptyResultSet:  # a filter that matches nothing whatever the rows (``none()``)
                self._keys = []
                return 0
            with db.cursor() as cursor:
                cursor.execute(
                    f"SELECT count(*), CASE WHEN count(*) < %s THEN array_agg(w.k) END FROM ({sql}) AS w(k)",  # noqa: S608
                    [limit, *params],
                )
                counted, keys = cursor.fetchone()
        if counted < limit:
            self._keys = list(keys or [])  # every match: the page is read by these keys
        return int(counted)

    def _count_with_page(self, rows: QuerySet[Any], limit: int, bottom: int) -> int:
        """The count, every key when they are fewer than ``limit``, and the keys of the page starting at row
        ``bottom``, in one statement that finds the matches once (PostgreSQL).

        The matches, with the ordering's columns, are materialized up to ``MAX_PAGINATED_ROWS + 1``: the
        count and the page are read from them. Counting and paging a non-superuser's list each built the
        visible set and probed it (5,150 tokens in "Scale"); now once. When there are more matches than
        pages reach, the page's keys are dropped and the page is read as without this statement.
        """
        order = [str(name) for name in rows.query.order_by]  # field names (``_plain_ordering``)
        fields = [name.lstrip("-") for name in order]
        columns = [name for name in dict.fromkeys(fields) if name != "pk"]
        window = rows.order_by().values_list("pk", *columns)[: MAX_PAGINATED_ROWS + 1]
        try:
            sql, params = window.query.get_compiler(using=rows.db).as_sql()
        except EmptyResultSet:
            self._keys = []
            return 0
        names = ["k", *(f"o{index}" for index in range(len(columns)))]
        by_column = {"pk": "k", **{name: f"o{index}" for index, name in enumerate(columns)}}
        ordering = ", ".join(
            f"{by_column[field]} {'DESC' if name.startswith('-') else 'ASC'}"
            for name, field in zip(order, fields, strict=True)
        )
        statement = (
            f"WITH m({', '.join(names)}) AS MATERIALIZED ({sql}) "  # noqa: S608 - generated names only
            "SELECT (SELECT count(*) FROM m), (SELECT CASE WHEN count(*) < %s THEN array_agg(k) END FROM m), "
            f"ARRAY(SELECT k FROM m ORDER BY {ordering} LIMIT %s OFFSET %s)"
        )
        with connections[rows.db].cursor() as cursor:
            # One key more: the first of the next page, which a page of an estimated count reads too.
            cursor.execute(statement, [*params, limit, self.per_page + 1, bottom])
            matches, keys, page_keys = cursor.fetchone()
        if matches < limit:
            self._keys = list(keys or [])
        elif matches <= MAX_PAGINATED_ROWS:  # every match was read: the page's keys are those of the page
            self._page_keys = (bottom, list(page_keys))
        return int(min(matches, limit))

    def page(self, number: Any) -> Page:
        rows = self.object_list
        if self.one_pass and isinstance(rows, QuerySet) and _readable_by_key(rows):
            # The first row of the page asked for, if it is a page number at all (validate_number decides).
            try:
                self._wanted = max(int(number) - 1, 0) * self.per_page
            except (TypeError, ValueError):
                self._wanted = None
        try:
            number = self.validate_number(number)  # runs the count
        finally:
            self._wanted = None
        if not isinstance(rows, QuerySet) or not _readable_by_key(rows):
            return super().page(number)
        return self._page_by_key(rows, number)

    def _page_by_key(self, rows: QuerySet[Any], number: int) -> Page:
        """Django's Paginator.page, with the page read by key; for an estimated count, with the first row of the
        next page too (``BoundedPaginator.page``)."""
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if self.estimated:
            top += 1
        elif top + self.orphans >= self.count:
            top = self.count
        by_key = rows.model._base_manager.db_manager(rows.db).all()
        by_key.query.select_related = rows.query.select_related
        by_key = by_key.prefetch_related(*getattr(rows, "_prefetch_related_lookups", ()))  # not in the stubs
        if rows.query.order_by:
            by_key = by_key.order_by(*rows.query.order_by)
        if self._keys is not None:
            return Page(by_key.filter(pk__in=self._keys)[bottom:top], number, self)
        if self._page_keys is not None and self._page_keys[0] == bottom:
            return Page(by_key.filter(pk__in=self._page_keys[1])[: max(top - bottom, 0)], number, self)
        if not self._ordered_by_indexed_fields(rows):
            return BoundedPaginator.page(self, number)
        # A larger result in an order that an index holds with the key: the page's keys (the filters, the
        # ordering and the slice, reading only the key and the ordering's columns), then their rows, in one
        # statement. A caller who sees 5,150 tokens probed each for its whole row before sorting; now each
        # probe reads the index alone (core migration 0009), and only the page's rows are read.
        return Page(by_key.filter(pk__in=rows.values("pk")[bottom:top]), number, self)

    def _ordered_by_indexed_fields(self, rows: QuerySet[Any]) -> bool:
        fields = [field.lstrip("-") if isinstance(field, str) else None for field in rows.query.order_by]
        return bool(fields) and set(fields) <= self.indexed_order_fields


class Pagination(PageNumberPagination):
    """authentik's envelope: numeric page links (0 when absent), counts and an autocomplete map.

    ``page_size`` must be a positive integer (400 otherwise; DRF would silently use the default), and is
    capped at ``max_page_size``. A ``page`` that is not a page of the result set is DRF's 404 "Invalid page.".
    ``count`` is exact up to ``EXACT_COUNT_LIMIT`` and an estimate beyond; pages reach the first
    ``MAX_PAGINATED_ROWS`` rows.
    """

    django_paginator_class = BoundedPaginator
    # Rows that all match the list, set by a view before ``page_of``: counted first (``BoundedPaginator.part``).
    count_part: QuerySet[Any] | None = None
    # Set by a view whose rows are known to be few: count and page in one statement (KeyedPaginator.one_pass).
    one_pass = False
    page_size_query_param = "page_size"
    max_page_size = 100

    def paginate_queryset(self, queryset: Any, request: Request, view: Any = None) -> list[Any]:
        return list(self.page_of(queryset, request))

    def page_of(self, queryset: Any, request: Request) -> Page:
        """DRF's ``paginate_queryset`` up to the page, without reading its rows: ``object_list`` of the page
        returned is still the unevaluated queryset (a slice) of its rows, for a view that reads them its own
        way (the token list, ``core.listing``). Counting, page number and errors (404 "Invalid page.") are
        unchanged. (DRF's page controls are left out: they serve the browsable API, which is not enabled.)
        """
        self.request = request
        page_size = self.get_page_size(request)
        paginator = self.django_paginator_class(queryset, page_size)
        if isinstance(paginator, BoundedPaginator):
            paginator.part = self.count_part
        if isinstance(paginator, KeyedPaginator):
            paginator.one_pass = self.one_pass
        page_number = self.get_page_number(request, paginator)
        try:
            self.page = paginator.page(page_number)
        except InvalidPage as exc:
            message = self.invalid_page_message.format(page_number=page_number, message=str(exc))
            raise exceptions.NotFound(message) from exc
        return self.page

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
                    f"Pages reach the first {MAX_PAGINATED_ROWS} rows of a result: a page starting beyond "
                    f"them is 404 (narrow the filters or reverse the ordering instead). pagination.count is "
                    f"exact up to {EXACT_COUNT_LIMIT}; above, it is the database's estimate."
                )
        return parameters

    def get_paginated_response(self, data: Any) -> Response:
        page = self.page
        assert page is not None  # set by paginate_queryset, which DRF always calls first
        # Every page of an estimated count is read with the first row of the next (BoundedPaginator.page).
        if getattr(page.paginator, "estimated", False):
            envelope, data = self._probed_envelope(page, data)
        else:
            envelope = {
                "next": page.next_page_number() if page.has_next() else 0,
                "previous": page.previous_page_number() if page.has_previous() else 0,
                "count": page.paginator.count,
                "current": page.number,
                "total_pages": page.paginator.num_pages,
                "start_index": page.start_index(),
                "end_index": page.end_index(),
            }
        return Response({"pagination": envelope, "results": data, "autocomplete": {}})

    def _probed_envelope(self, page: Page, data: Any) -> tuple[dict[str, int], Any]:
        """The envelope of a page read with the first row of the next (``BoundedPaginator.page``), and the page's
        own rows. ``next`` is exact; on the last page so are ``count`` and ``total_pages``, elsewhere they are
        the estimate's, raised where the rows found exceed it. A page past the last row is 404, as without an
        estimate."""
        paginator = page.paginator
        assert isinstance(paginator, BoundedPaginator)  # the only paginators that estimate
        per_page, number, reachable = paginator.per_page, page.number, paginator.reachable_pages
        more, data = len(data) > per_page, data[:per_page]
        if not data and number > 1:
            raise exceptions.NotFound(self.invalid_page_message.format(page_number=number, message="empty"))
        bottom = (number - 1) * per_page
        if more:
            count = max(paginator.count, bottom + per_page + 1)
            total_pages = min(max(-(-count // per_page), number + 1), reachable)
        else:
            count, total_pages = bottom + len(data), number
        return {
            "next": number + 1 if more and number < reachable else 0,
            "previous": number - 1 if number > 1 else 0,
            "count": count,
            "current": number,
            "total_pages": total_pages,
            "start_index": bottom + 1 if data else 0,
            "end_index": bottom + len(data),
        }, data

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


class KeyedPagination(Pagination):
    """``Pagination`` whose small results are found once, by the count (``KeyedPaginator``): for the token list."""

    django_paginator_class = KeyedPaginator
