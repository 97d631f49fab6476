"""Concurrency on PostgreSQL: real threads, real transactions, real row locks."""

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.conf import settings
from django.db import connection
from django.urls import reverse
from rest_framework.test import APIClient

from core.models import Token, generate_key, key_digest
from core.services import key_fingerprint
from events.models import Event
from tests.helpers import requires_postgres

pytestmark = [requires_postgres, pytest.mark.race, pytest.mark.django_db(transaction=True)]
NO_COLLISION_LIMIT = {**settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"], "key_collisions": None}


def run_concurrently(jobs: list[Callable[[], Any]]) -> list[Any]:
    """Run every job in its own thread (and database connection), released together by a barrier."""
    barrier = threading.Barrier(len(jobs))
    results: list[Any] = [None] * len(jobs)

    def worker(index: int, job: Callable[[], Any]) -> None:
        try:
            barrier.wait()
            results[index] = job()
        except Exception as exc:  # surfaced by the assertions on results
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def set_key_job(bearer_key: str, identifier: str, key: str) -> Callable[[], int]:
    def job() -> int:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {bearer_key}")
        url = reverse("token-set-key", kwargs={"identifier": identifier})
        return client.post(url, {"key": key}, format="json").status_code

    return job


def test_concurrent_set_key_on_one_token_serializes(admin_token, make_token, superuser):
    target = make_token(superuser)
    keys = [generate_key() for _ in range(12)]
    statuses = run_concurrently([set_key_job(admin_token.key, target.identifier, key) for key in keys])

    assert statuses == [204] * len(keys)
    events = list(Event.objects.filter(action="model_updated").order_by("created"))
    assert len(events) == len(keys)
    # Each event's fingerprint names one of the submitted keys, each exactly once (no update lost).
    fingerprints = {key_fingerprint(key): key for key in keys}
    assert sorted(event.context["key_fingerprint"] for event in events) == sorted(fingerprints)
    # The key left in the row is the one whose transaction committed last.
    target.refresh_from_db()
    assert fingerprints[events[-1].context["key_fingerprint"]] == target.key


def test_many_tokens_racing_to_one_key_has_exactly_one_winner(admin_token, make_token, make_user, settings):
    # Collisions are rate-limited per caller (a low limit); this test is about the database, not the limit.
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": NO_COLLISION_LIMIT}
    owner = make_user()
    targets = [make_token(owner) for _ in range(12)]
    before = {token.pk: token.key for token in targets}
    shared_key = generate_key()
    statuses = run_concurrently([set_key_job(admin_token.key, token.identifier, shared_key) for token in targets])

    assert sorted(statuses) == [204] + [400] * (len(targets) - 1)
    assert Token.objects.filter(key_digest=key_digest(shared_key)).count() == 1
    assert Event.objects.filter(action="model_updated").count() == 1
    # Every loser was audited as a suspicious request.
    assert Event.objects.filter(action="suspicious_request").count() == len(targets) - 1
    winner = Token.objects.get(key_digest=key_digest(shared_key))
    assert winner.key == shared_key
    for token in Token.objects.filter(pk__in=before).exclude(pk=winner.pk):
        assert token.key == before[token.pk]


def test_rotation_racing_with_authentication_never_authenticates_the_old_key(make_user, make_token):
    caller = make_user(superuser=True)
    token = make_token(caller)
    old_key, new_key = token.key, generate_key()
    statuses = run_concurrently(
        [set_key_job(old_key, token.identifier, new_key)]
        + [set_key_job(old_key, "no-such-token", "x") for _ in range(6)]
    )
    assert statuses[0] == 204
    # Requests racing the rotation were either authenticated before it (404: no such token) or not (403).
    assert set(statuses[1:]) <= {403, 404}
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {old_key}")
    response = client.post(
        reverse("token-set-key", kwargs={"identifier": token.identifier}), {"key": "y"}, format="json"
    )
    assert response.status_code == 403
