"""last_used / last_used_ip, the list filters that find stale tokens, and per-token IP allowlists."""

from datetime import timedelta

import pytest
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone

from core.models import Token
from core.usage import USAGE_INTERVAL, ip_allowed, normalize_cidr, token_record_use
from events.models import Event, EventAction
from tests.helpers import requires_postgres


def list_url() -> str:
    return reverse("token-list")


def detail(identifier: str) -> str:
    return reverse("token-detail", kwargs={"identifier": identifier})


def fresh_token(make_token, user, **fields) -> Token:
    """A token never used before (the fixture's tokens are "in use")."""
    return make_token(user, last_used=None, **fields)


# --- last_used --------------------------------------------------------------------------------------


def test_first_use_is_recorded_with_the_client_address(bearer, make_token, superuser):
    token = fresh_token(make_token, superuser)
    response = bearer(token).get(list_url(), REMOTE_ADDR="198.51.100.7")
    assert response.status_code == 200
    token.refresh_from_db()
    assert token.last_used is not None
    assert timezone.now() - token.last_used < timedelta(minutes=1)
    assert token.last_used_ip == "198.51.100.7"


def test_uses_within_a_minute_write_nothing(bearer, make_token, superuser):
    token = fresh_token(make_token, superuser)
    bearer(token).get(list_url(), REMOTE_ADDR="198.51.100.7")
    first = Token.objects.get(pk=token.pk).last_used
    bearer(token).get(list_url(), REMOTE_ADDR="203.0.113.9")
    token.refresh_from_db()
    assert token.last_used == first
    assert token.last_used_ip == "198.51.100.7"  # sampled once a minute, not on every request


def test_a_use_after_the_interval_is_recorded_again(bearer, make_token, superuser):
    stale = timezone.now() - USAGE_INTERVAL - timedelta(seconds=1)
    token = make_token(superuser, last_used=stale, last_used_ip="198.51.100.7")
    bearer(token).get(list_url(), REMOTE_ADDR="2001:db8::5")
    token.refresh_from_db()
    assert token.last_used > stale
    assert token.last_used_ip == "2001:db8::5"


def test_the_conditional_update_never_moves_a_recent_use(make_token, superuser):
    token = make_token(superuser)  # used just now
    assert not token_record_use(token=token, ip="192.0.2.1", now=timezone.now())
    assert Token.objects.get(pk=token.pk).last_used_ip is None


def test_failed_authentication_records_nothing(bearer, make_token, make_user):
    token = fresh_token(make_token, make_user(is_active=False))
    assert bearer(token).get(list_url()).status_code == 403
    assert Token.objects.get(pk=token.pk).last_used is None


def test_usage_fields_are_read_only(bearer, admin_token, make_token, superuser):
    token = make_token(superuser, identifier="t1")
    before = Token.objects.get(pk=token.pk)
    response = bearer(admin_token).patch(
        detail("t1"), {"last_used": "2001-01-01T00:00:00Z", "last_used_ip": "192.0.2.1"}, format="json"
    )
    assert response.status_code == 200
    after = Token.objects.get(pk=token.pk)
    assert (after.last_used, after.last_used_ip) == (before.last_used, before.last_used_ip)


def test_usage_is_shown_in_the_api(bearer, admin_token, make_token, superuser):
    moment = timezone.now() - timedelta(days=3)
    make_token(superuser, identifier="shown", last_used=moment, last_used_ip="2001:db8::1")
    body = bearer(admin_token).get(detail("shown")).json()
    assert body["last_used_ip"] == "2001:db8::1"
    assert body["last_used"].startswith(moment.strftime("%Y-%m-%dT%H:%M"))
    assert body["allowed_ips"] is None


# --- cost: query counts per authenticated request ---------------------------------------------------


def test_a_token_in_use_costs_no_extra_query(bearer, make_token, superuser, django_assert_num_queries):
    token = make_token(superuser)  # its last use is recent: the common case
    client = bearer(token)
    # bearer lookup, COUNT, page of tokens joined with owners, owners' groups: as before usage tracking.
    with django_assert_num_queries(4):
        assert client.get(list_url()).status_code == 200


def test_the_first_use_in_a_minute_costs_one_statement(bearer, make_token, superuser, django_assert_num_queries):
    token = fresh_token(make_token, superuser)
    client = bearer(token)
    with django_assert_num_queries(5):  # the same four, plus one conditional UPDATE
        assert client.get(list_url()).status_code == 200
    with django_assert_num_queries(4):
        assert client.get(list_url()).status_code == 200


def test_an_allowlist_costs_no_query(bearer, make_token, superuser, django_assert_num_queries):
    token = make_token(superuser, allowed_ips=["127.0.0.0/8"])
    client = bearer(token)
    with django_assert_num_queries(4):
        assert client.get(list_url()).status_code == 200


# --- filters ----------------------------------------------------------------------------------------


@pytest.fixture
def usage_history(make_token, superuser, admin_token):
    now = timezone.now()
    make_token(superuser, identifier="never", last_used=None)
    make_token(superuser, identifier="old", last_used=now - timedelta(days=90))
    make_token(superuser, identifier="recent", last_used=now - timedelta(hours=1))
    return now


def identifiers(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {row["identifier"] for row in response.json()["results"]} - {"admin-api"}


def test_stale_token_filters(bearer, admin_token, usage_history):
    client = bearer(admin_token)
    month_ago = (usage_history - timedelta(days=30)).isoformat()
    assert identifiers(client.get(list_url(), {"last_used__lt": month_ago})) == {"old"}
    assert identifiers(client.get(list_url(), {"last_used__gte": month_ago})) == {"recent"}
    assert identifiers(client.get(list_url(), {"last_used__isnull": "true"})) == {"never"}
    assert identifiers(client.get(list_url(), {"last_used__isnull": "false"})) == {"old", "recent"}
    assert identifiers(client.get(list_url(), {"unused_since": month_ago})) == {"never", "old"}
    ordered = client.get(list_url(), {"ordering": "last_used"}).json()["results"]
    # Where never-used tokens sort (NULL) depends on the database; the used ones are in order.
    assert [row["identifier"] for row in ordered if row["identifier"] in {"old", "recent"}] == ["old", "recent"]


@pytest.mark.parametrize(
    ("name", "value"), [("last_used__lt", "yesterday"), ("unused_since", "2020-13-01"), ("last_used__isnull", "maybe")]
)
def test_malformed_filter_values_are_400(name, value, bearer, admin_token):
    response = bearer(admin_token).get(list_url(), {name: value})
    assert response.status_code == 400
    assert name in response.json()


# --- allowed_ips: validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("192.0.2.0/24", "192.0.2.0/24"),
        ("192.0.2.7", "192.0.2.7/32"),
        (" 10.0.0.0/8 ", "10.0.0.0/8"),
        ("2001:DB8::/32", "2001:db8::/32"),
        ("2001:db8::1", "2001:db8::1/128"),
    ],
)
def test_networks_are_normalized(given, stored):
    assert normalize_cidr(given) == stored


@pytest.mark.parametrize("bad", ["192.0.2.7/24", "300.0.0.0/8", "10.0.0.0/33", "fe80::1%eth0", "", "example.com"])
def test_malformed_networks_are_rejected(bad):
    with pytest.raises(ValueError, match=r"valid|Host bits"):
        normalize_cidr(bad)


def test_create_with_an_allowlist(bearer, admin_token):
    body = {"identifier": "ci", "allowed_ips": ["192.0.2.0/24", "2001:db8::1", "192.0.2.0/24"]}
    response = bearer(admin_token).post(list_url(), body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["allowed_ips"] == ["192.0.2.0/24", "2001:db8::1/128"]
    assert Token.objects.get(identifier="ci").allowed_ips == ["192.0.2.0/24", "2001:db8::1/128"]


@pytest.mark.parametrize(
    "value",
    [["192.0.2.7/24"], ["not-an-ip"], "192.0.2.0/24", [5], [None], {"a": 1}, ["10.0.0.0/8"] * 101, ["1" * 65]],
)
def test_malformed_allowlists_are_400_on_allowed_ips_and_change_nothing(
    value, bearer, admin_token, make_token, superuser
):
    token = make_token(superuser, identifier="t1", allowed_ips=["10.0.0.0/8"])
    client = bearer(admin_token)
    response = client.patch(detail("t1"), {"allowed_ips": value}, format="json")
    assert response.status_code == 400
    assert "allowed_ips" in response.json()
    assert Token.objects.get(pk=token.pk).allowed_ips == ["10.0.0.0/8"]
    created = client.post(list_url(), {"identifier": "new", "allowed_ips": value}, format="json")
    assert created.status_code == 400
    assert not Token.objects.filter(identifier="new").exists()


def test_absent_means_unchanged_and_empty_or_null_means_unrestricted(bearer, admin_token, make_token, superuser):
    make_token(superuser, identifier="t1", allowed_ips=["10.0.0.0/8"])
    client = bearer(admin_token)
    assert client.patch(detail("t1"), {"description": "x"}, format="json").json()["allowed_ips"] == ["10.0.0.0/8"]
    assert client.put(detail("t1"), {"identifier": "t1"}, format="json").json()["allowed_ips"] == ["10.0.0.0/8"]
    assert client.patch(detail("t1"), {"allowed_ips": []}, format="json").json()["allowed_ips"] is None
    client.patch(detail("t1"), {"allowed_ips": ["10.0.0.0/8"]}, format="json")
    assert client.patch(detail("t1"), {"allowed_ips": None}, format="json").json()["allowed_ips"] is None
    assert Token.objects.get(identifier="t1").allowed_ips is None


def test_changing_the_allowlist_is_audited(bearer, admin_token, make_token, superuser):
    make_token(superuser, identifier="t1")
    bearer(admin_token).patch(detail("t1"), {"allowed_ips": ["10.0.0.0/8"]}, format="json")
    event = Event.objects.get(action=EventAction.MODEL_UPDATED)
    assert event.context["changed_fields"] == ["allowed_ips"]


# --- allowed_ips: enforcement -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "ip", "ok"),
    [
        (None, "198.51.100.7", True),
        ([], "198.51.100.7", True),
        (["198.51.100.0/24"], "198.51.100.7", True),
        (["198.51.100.0/24"], "198.51.101.7", False),
        (["2001:db8::/32"], "2001:db8:1::9", True),
        (["2001:db8::/32"], "2001:db9::9", False),
        (["2001:db8::/32"], "198.51.100.7", False),
        (["198.51.100.7/32", "2001:db8::/32"], "2001:db8::1", True),
        (["198.51.100.0/24"], None, False),
    ],
)
def test_ip_allowed(allowed, ip, ok):
    assert ip_allowed(ip, allowed) is ok


@pytest.mark.parametrize(
    ("remote", "ok"), [("198.51.100.7", True), ("::ffff:198.51.100.7", True), ("203.0.113.1", False)]
)
def test_allowlist_is_enforced_at_authentication(remote, ok, bearer, make_token, superuser):
    token = make_token(superuser, allowed_ips=["198.51.100.0/24"])
    response = bearer(token).get(list_url(), REMOTE_ADDR=remote)
    if ok:
        assert response.status_code == 200
        assert not Event.objects.exists()
    else:
        assert response.status_code == 403
        assert response.json()["code"] == "authentication_failed"
        (event,) = Event.objects.filter(action=EventAction.SUSPICIOUS_REQUEST)
        assert event.context["reason"] == "ip_not_allowed"
        assert event.client_ip == remote
        assert event.context["model"]["name"] == token.identifier
        assert token.key not in str(event.context)


def test_violations_write_at_most_one_event_per_minute(bearer, make_token, superuser):
    token = make_token(superuser, allowed_ips=["2001:db8::/32"])
    client = bearer(token)
    for _ in range(5):
        assert client.get(list_url(), REMOTE_ADDR="203.0.113.1").status_code == 403
    assert Event.objects.filter(action=EventAction.SUSPICIOUS_REQUEST).count() == 1


def test_without_its_cache_every_violation_is_audited_and_the_cache_is_paused(bearer, make_token, superuser, caplog):
    from tokens_service.throttling import CachePause

    token = make_token(superuser, allowed_ips=["2001:db8::/32"])
    client = bearer(token)
    dead = {"default": {"BACKEND": "tokens_service.cache.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}}
    with override_settings(CACHES=dead), caplog.at_level("WARNING"):
        for _ in range(3):
            assert client.get(list_url(), REMOTE_ADDR="203.0.113.1").status_code == 403
    # Audited rather than silent; the failed cache was asked once, then left alone (CachePause).
    assert Event.objects.filter(action=EventAction.SUSPICIOUS_REQUEST).count() == 3
    assert CachePause.active()
    assert caplog.text.count("throttle cache unavailable") == 1


@override_settings(TRUSTED_PROXY_CIDRS=[__import__("ipaddress").ip_network("10.0.0.0/8")])
def test_allowlist_uses_the_client_address_behind_trusted_proxies(bearer, make_token, superuser):
    token = make_token(superuser, allowed_ips=["2001:db8::/32"])
    client = bearer(token)
    behind = {"REMOTE_ADDR": "10.0.0.2"}
    assert client.get(list_url(), HTTP_X_FORWARDED_FOR="2001:db8::7", **behind).status_code == 200
    assert client.get(list_url(), HTTP_X_FORWARDED_FOR="203.0.113.5", **behind).status_code == 403
    # A client cannot claim an allowed address in front of an untrusted hop.
    spoofed = client.get(list_url(), HTTP_X_FORWARDED_FOR="2001:db8::7, 203.0.113.5", **behind)
    assert spoofed.status_code == 403
    # Nor directly, without a proxy.
    assert client.get(list_url(), HTTP_X_FORWARDED_FOR="2001:db8::7", REMOTE_ADDR="203.0.113.5").status_code == 403


def test_refused_addresses_count_as_failed_authentications(bearer, make_token, superuser, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK}
    settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {
        **settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"],
        "auth_failures": "2/min",
    }
    token = make_token(superuser, allowed_ips=["2001:db8::/32"])
    client = bearer(token)
    statuses = [client.get(list_url(), REMOTE_ADDR="203.0.113.1").status_code for _ in range(3)]
    assert statuses == [403, 403, 429]


@requires_postgres
@pytest.mark.django_db(transaction=True)
def test_a_locked_token_is_not_waited_for_and_its_use_is_recorded_later(bearer, make_token, superuser):
    import psycopg
    from django.conf import settings as django_settings

    token = fresh_token(make_token, superuser)
    db = django_settings.DATABASES["default"]
    holder = psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"], autocommit=False
    )
    try:
        # Another transaction (a set_key, a rotation) holds the token's row lock.
        holder.execute(f"SELECT 1 FROM {Token._meta.db_table} WHERE token_uuid = %s FOR UPDATE", [token.pk])  # noqa: S608
        assert bearer(token).get(list_url()).status_code == 200
        assert Token.objects.get(pk=token.pk).last_used is None  # skipped, not waited for
    finally:
        holder.rollback()
        holder.close()
    assert bearer(token).get(list_url()).status_code == 200
    assert Token.objects.get(pk=token.pk).last_used is not None
