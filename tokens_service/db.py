"""Which statements PostgreSQL may keep a prepared plan for.

psycopg prepares a statement once it has run ``prepare_threshold`` (5) times on a connection, and after five
more runs PostgreSQL may switch the prepared statement to a generic plan, one made without the parameters'
values. For the statements every request makes (the bearer lookup, ``set_key``'s and ``view_key``'s single
statements: lookups by a unique key) that saves about half of their database CPU (README, "Performance").
For a filter whose values differ widely in frequency it is a trap: the generic plan is chosen for an average
value, and a rare or absent one then reads millions of rows. Measured at 5,000,000 events, from the 11th
identical request on a connection: ``?context_model_name=application`` (no match) 3 ms with a plan for its
value, 830 ms with the generic plan; ``tokens ?description=backup job`` 5 ms and 130 ms (README, "Scale").

So only statements run inside ``prepared_plans()`` are prepared: the fast path's (``core.fastpath``) and those of
list pages that no request value filters. Every other statement is planned for its own values each time, as
Django does by default.
"""

import contextvars
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from django.db.backends.postgresql.base import ServerBindingCursor

_may_prepare: contextvars.ContextVar[bool] = contextvars.ContextVar("may_prepare", default=False)

# List parameters that choose a page or its order, never which rows match: the statements' plans do not
# depend on their values (a page is an index range in either direction, README "Scale").
UNFILTERED_PARAMETERS = frozenset({"page", "page_size", "ordering"})


class SelectivelyPreparedCursor(ServerBindingCursor):
    """Django's server-side binding cursor that lets psycopg prepare a statement only inside ``prepared_plans()``."""

    def execute(
        self, query: Any, params: Any = None, *, prepare: bool | None = None, binary: bool | None = None
    ) -> Any:
        if prepare is None and not _may_prepare.get():
            prepare = False
        return super().execute(query, params, prepare=prepare, binary=binary)  # type: ignore[misc]


@contextmanager
def prepared_plans(allowed: bool = True) -> Iterator[None]:
    """Statements run inside may be prepared (when ``allowed``): only those whose plan suits every value."""
    token = _may_prepare.set(allowed)
    try:
        yield
    finally:
        _may_prepare.reset(token)


def filters_nothing(query_params: Mapping[str, Any] | Iterable[str]) -> bool:
    """Whether a list request's parameters only choose the page and its order."""
    return set(query_params) <= UNFILTERED_PARAMETERS


def list_page_plans(query_params: Mapping[str, Any]) -> AbstractContextManager[None]:
    """``prepared_plans`` for the statements of a list page: allowed only when no request value filters the rows."""
    return prepared_plans(filters_nothing(query_params))
