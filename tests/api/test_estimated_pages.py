"""Following ``next`` through a result whose count is the planner's estimate reaches every row exactly once.

Above ``EXACT_COUNT_LIMIT`` matches, ``pagination.count`` is PostgreSQL's estimate. ``next`` and the last
page's figures must not come from it: an estimate short of the rows would hide the last ones from a client
that follows ``next`` (authentik's clients and scripts do), one over would send it to empty pages. The
estimate is replaced here by a chosen figure (on both database lanes), so each case is exact.
"""

import pytest
from django.urls import reverse

from events.models import Event, EventAction
from tokens_service import pagination

VIEW_EVENT = "authentik_events.view_event"
ROWS = 12


@pytest.fixture
def estimate_of(monkeypatch):
    """Counts above 5 rows are "estimated" at the figure given."""

    def use(figure: int) -> None:
        monkeypatch.setattr(pagination, "EXACT_COUNT_LIMIT", 5)
        monkeypatch.setattr(pagination, "_estimated_rows", lambda rows: figure)

    return use


@pytest.fixture
def owner(make_user):
    return make_user()


@pytest.fixture(params=["superuser", "owner"])
def reader(request, owner, make_user, make_token, bearer):
    """A superuser (who sees every token), or the owner of every token, whose list is counted and paged in one
    statement (``KeyedPaginator.one_pass``)."""
    user = make_user(superuser=True) if request.param == "superuser" else owner
    return bearer(make_token(user, identifier="aaa-reader"))


@pytest.fixture
def tokens(owner, reader, make_token):
    # With the reader's own token: ROWS tokens in all, in identifier order.
    return ["aaa-reader", *(make_token(owner, identifier=f"tok-{n:02}").identifier for n in range(ROWS - 1))]


def follow(client, url: str, page_size: int, name: str) -> tuple[list[str], list[dict]]:
    """Every row reached by following ``next`` from page 1, and each page's envelope."""
    seen, envelopes, number = [], [], 1
    while number:
        response = client.get(url, {"page_size": page_size, "page": number})
        assert response.status_code == 200, response.content
        body = response.json()
        assert body["results"], f"page {number} is empty"
        seen += [row[name] for row in body["results"]]
        envelopes.append(body["pagination"])
        number = body["pagination"]["next"]
    return seen, envelopes


@pytest.mark.parametrize("figure", [6, 9, ROWS, 40])  # under, under, right, over
@pytest.mark.parametrize("page_size", [3, 4, 5])  # the last page full (3, 4) or not (5)
def test_next_reaches_every_token_once_whatever_the_estimate(figure, page_size, reader, tokens, estimate_of):
    estimate_of(figure)
    seen, envelopes = follow(reader, reverse("token-list"), page_size, "identifier")
    assert seen == tokens
    last = envelopes[-1]
    # The last page knows where the rows end.
    assert last["count"] == ROWS
    assert last["total_pages"] == last["current"] == -(-ROWS // page_size)
    assert last["end_index"] == ROWS
    for number, envelope in enumerate(envelopes, start=1):
        assert envelope["current"] == number
        assert envelope["previous"] == number - 1
        assert envelope["start_index"] == (number - 1) * page_size + 1
        # Before the last page, the figures are the estimate's, never below the rows already seen.
        assert envelope["count"] >= min(number * page_size + 1, ROWS)
        assert envelope["total_pages"] > number or envelope is last


@pytest.mark.parametrize("figure", [6, 40])
def test_a_page_past_the_last_row_is_404_and_one_the_estimate_missed_is_served(figure, reader, tokens, estimate_of):
    estimate_of(figure)
    # Page 4 of 3 rows: beyond an estimate of 6, but the rows are there.
    missed = reader.get(reverse("token-list"), {"page_size": 3, "page": 4})
    assert missed.status_code == 200
    assert [row["identifier"] for row in missed.json()["results"]] == tokens[9:12]
    beyond = reader.get(reverse("token-list"), {"page_size": 3, "page": 5})
    assert beyond.status_code == 404
    assert beyond.json() == {"detail": "Invalid page.", "code": "not_found"}


def test_pages_still_end_at_the_row_bound(reader, tokens, estimate_of, monkeypatch):
    estimate_of(40)
    monkeypatch.setattr(pagination, "MAX_PAGINATED_ROWS", 7)
    seen, envelopes = follow(reader, reverse("token-list"), 3, "identifier")
    # Pages start at rows 1, 4 and 7: the third is the last that can be reached, and it says so.
    assert seen == tokens[:9]
    assert [envelope["next"] for envelope in envelopes] == [2, 3, 0]
    assert reader.get(reverse("token-list"), {"page_size": 3, "page": 4}).status_code == 404


@pytest.mark.parametrize("figure", [6, 40])
def test_next_reaches_every_event_once(figure, make_user, make_token, bearer, estimate_of):
    client = bearer(make_token(make_user(perms=(VIEW_EVENT,))))
    Event.objects.bulk_create([Event(action=EventAction.LOGIN, app="test", context={"n": n}) for n in range(ROWS)])
    estimate_of(figure)
    seen, envelopes = follow(client, reverse("event-list"), 4, "context")
    assert sorted(row["n"] for row in seen) == list(range(ROWS))
    assert envelopes[-1]["count"] == ROWS
    assert [envelope["next"] for envelope in envelopes] == [2, 3, 0]
