"""Build a large PostgreSQL database for bench/scale.py: users, tokens, object permissions and events.

Usage (an empty database; the script migrates it first)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/hf_big python bench/seed_big.py \
        [--users 20000] [--tokens 500000] [--events 5000000] [--days 365]

Every row is made by set-based SQL (``generate_series``), so 500,000 tokens and 5,000,000 events take a
few minutes on two cores. Tokens and users are numbered; a token's uuid is ``md5('tok-' || n)``, so an
event can name its token without a join. The data imitates an installation's audit log: events spread
evenly over the last ``--days`` days, mostly ``model_*`` events on tokens, ``secret_view`` and logins, from
a few thousand client addresses (IPv4 and some IPv6) and every user.

Three callers for the benchmark get API tokens with fixed keys (a benchmark database holds nothing
secret): ``bench-super`` (superuser), ``bench-user`` (no global permission; owns 50 tokens and holds
object permissions on 200 more, 100 through a group). Their keys are ``CALLER_KEYS`` below.
"""

import argparse
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tokens_service.settings")
os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key-not-for-production")
os.environ["DB_STATEMENT_TIMEOUT_MS"] = "0"  # seeding statements run for minutes
os.environ["DB_PREPARED_STATEMENTS"] = "0"

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

CALLER_KEYS = {
    "bench-super": "bench-super-key-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTU",
    "bench-user": "bench-user-key-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUV",
}


def run(sql: str, params: list | None = None, label: str = "") -> None:
    started = time.monotonic()
    with connection.cursor() as cursor:
        cursor.execute(sql, params or [])
    if label:
        print(f"{label}: {time.monotonic() - started:.1f} s", flush=True)


def seed_keys(tokens: int) -> None:
    """A temporary table ``seed_key (num, key, key_digest)``: the n-th token's stored key and lookup digest.

    Made in Python, as the service stores them (AES-GCM ciphertext, peppered HMAC; the table's check
    constraints require both shapes), so that listing or reading the seeded tokens decrypts real values.
    """
    from core.crypto import encrypt_key, generate_key, key_digest

    started = time.monotonic()
    run("CREATE TEMP TABLE seed_key (num integer PRIMARY KEY, key text NOT NULL, key_digest text NOT NULL)")
    with connection.cursor() as cursor, cursor.cursor.copy("COPY seed_key (num, key, key_digest) FROM STDIN") as copy:
        for n in range(1, tokens + 1):
            key = generate_key()
            copy.write_row((n, encrypt_key(key), key_digest(key)))
    run("ANALYZE seed_key")
    print(f"token keys: {time.monotonic() - started:.1f} s", flush=True)


def create_past_months(days: int) -> None:
    """The monthly event partitions of the last ``days`` days, as an installation that has been running
    (and running ``create_event_partitions``) that long has them; otherwise those events would all land in
    the catch-all partition, and no plan would be the one of a partitioned year."""
    from django.utils import timezone

    from events.partitions import create_month, month_start, next_month

    now = timezone.now()
    month, last = month_start(now - timedelta(days=days)), month_start(now)
    while month <= last:
        create_month(month)
        month = next_month(month)


def seed(users: int, tokens: int, events: int, days: int) -> None:
    run("SET synchronous_commit = off")
    run("SET maintenance_work_mem = '256MB'")
    run("SET work_mem = '64MB'")
    run(
        """
INSERT INTO authentik_core_user (password, is_superuser, username, first_name, last_name, email, is_staff,
    is_active, date_joined, uuid, name, attributes, type, path, password_change_date, last_updated)
SELECT '!', false, 'user' || n, '', '', 'user' || n || '@example.test', false, n %% 50 <> 0,
    now() - n * interval '10 minutes', md5('user-' || n)::uuid, 'User ' || n, '{}', 'internal', 'users', now(), now()
FROM generate_series(1, %s) n""",
        [users],
        "users",
    )
    # Users are numbered by id in insertion order; map the n-th seeded user to its id once.
    run(
        "CREATE TEMP TABLE seed_user AS SELECT row_number() OVER (ORDER BY id) AS un, id, username, email "
        "FROM authentik_core_user WHERE username LIKE 'user%%'"
    )
    run("CREATE UNIQUE INDEX ON seed_user (un)")
    run("ANALYZE seed_user")
    seed_keys(tokens)
    run(
        """
INSERT INTO authentik_core_token (token_uuid, identifier, key, key_digest, intent, user_id, description, expires,
    expiring, managed, last_used, last_used_ip)
SELECT md5('tok-' || n)::uuid, 'tok-' || n, k.key, k.key_digest,
    CASE WHEN n %% 10 = 0 THEN 'app_password' WHEN n %% 97 = 0 THEN 'recovery' ELSE 'api' END,
    u.id,
    CASE n %% 4 WHEN 0 THEN 'ci deploy key ' || n WHEN 1 THEN 'backup job' WHEN 2 THEN ''
        ELSE 'grafana scraper ' || (n %% 100) END,
    CASE WHEN n %% 3 = 0 THEN NULL ELSE now() + ((n %% 730) - 100) * interval '1 day' END,
    n %% 3 <> 0,
    CASE WHEN n %% 5000 = 0 THEN 'goauthentik.io/managed/' || n END,
    CASE WHEN n %% 10 < 7 THEN now() - ((n::bigint * 13) %% (180 * 24)) * interval '1 hour' END,
    CASE WHEN n %% 10 < 7 THEN ('10.2.' || (n %% 200) || '.' || (n %% 250 + 1))::inet END
FROM generate_series(1, %s) n
JOIN seed_key k ON k.num = n
JOIN seed_user u ON u.un = 1 + (n::bigint * 7919) %% %s""",
        [tokens, users],
        "tokens",
    )
    # Object permissions: every 10th token is shared with another user (view_token), every 50th with a
    # group (change_token); 20 groups of 100 users each.
    run(
        "INSERT INTO auth_group (name) SELECT 'group' || g FROM generate_series(1, 20) g",
    )
    run(
        """
INSERT INTO authentik_core_user_groups (user_id, group_id)
SELECT u.id, g.id FROM seed_user u JOIN auth_group g ON g.name = 'group' || (1 + u.un %% 20) WHERE u.un <= 2000""",
    )
    perm = """(SELECT p.id FROM auth_permission p JOIN django_content_type c ON c.id = p.content_type_id
               WHERE c.app_label = 'authentik_core' AND p.codename = %s)"""
    ctype = "(SELECT id FROM django_content_type WHERE app_label = 'authentik_core' AND model = 'token')"
    run(
        f"""
INSERT INTO guardian_userobjectpermission (object_pk, content_type_id, permission_id, user_id)
SELECT md5('tok-' || n)::uuid::text, {ctype}, {perm}, u.id
FROM generate_series(10, %s, 10) n JOIN seed_user u ON u.un = 1 + (n::bigint * 104729) %% %s""",
        ["view_token", tokens, users],
        "user object permissions",
    )
    run(
        f"""
INSERT INTO guardian_groupobjectpermission (object_pk, content_type_id, permission_id, group_id)
SELECT md5('tok-' || n)::uuid::text, {ctype}, {perm}, g.id
FROM generate_series(50, %s, 50) n JOIN auth_group g ON g.name = 'group' || (1 + n %% 20)""",
        ["change_token", tokens],
        "group object permissions",
    )
    create_past_months(days)
    # Events, evenly over the last `days` days. Actions: 30% model_updated, 15% model_created, 5%
    # model_deleted, 15% secret_view, 25% login, 5% login_failed, 5% other.
    run(
        """
INSERT INTO authentik_events_event (event_uuid, "user", action, app, context, client_ip, created, expires, brand)
SELECT gen_random_uuid(),
    jsonb_build_object('pk', u.id, 'username', u.username, 'email', u.email),
    a.action,
    CASE WHEN a.action LIKE 'model_%%' OR a.action = 'secret_view' THEN 'core.api' ELSE 'authentik.events' END,
    CASE WHEN a.action LIKE 'model_%%' OR a.action = 'secret_view' THEN
        jsonb_build_object('model', jsonb_build_object('app', 'authentik_core', 'model_name', 'token',
            'pk', md5('tok-' || t.n), 'name', 'tok-' || t.n))
        || CASE WHEN a.action = 'model_updated' THEN '{"changed_fields": ["description"]}'::jsonb ELSE '{}' END
      ELSE '{}'::jsonb END
    || jsonb_build_object('http_request', jsonb_build_object('path', '/api/v3/core/tokens/', 'method', 'POST',
        'user_agent', 'python-requests/2.32', 'request_id', md5(g::text), 'args', '{}'::jsonb)),
    CASE WHEN g %% 20 = 0 THEN ('2001:db8::' || to_hex(g %% 4000))::inet
         ELSE ('10.' || (g %% 7) || '.' || (g / 7 %% 25) || '.' || (g %% 23))::inet END,
    c.created,
    c.created + interval '365 days',
    '{}'::jsonb
FROM generate_series(1, %s) g
CROSS JOIN LATERAL (SELECT now() - (%s * interval '1 day') * (g::float8 / %s) AS created) c
CROSS JOIN LATERAL (SELECT CASE
    WHEN g %% 100 < 30 THEN 'model_updated' WHEN g %% 100 < 45 THEN 'model_created'
    WHEN g %% 100 < 50 THEN 'model_deleted' WHEN g %% 100 < 65 THEN 'secret_view'
    WHEN g %% 100 < 90 THEN 'login' WHEN g %% 100 < 95 THEN 'login_failed'
    WHEN g %% 100 < 97 THEN 'secret_rotate' WHEN g %% 100 < 99 THEN 'logout' ELSE 'suspicious_request' END AS action) a
CROSS JOIN LATERAL (SELECT 1 + (g::bigint * 31) %% %s AS n) t
JOIN seed_user u ON u.un = 1 + (g::bigint * 13) %% %s""",
        [events, days, events, tokens, users],
        "events",
    )


def add_callers() -> None:
    from django.contrib.auth.models import Group, Permission

    from core.models import Token, User

    superuser = User.objects.create_user("bench-super", "super@bench.test", is_superuser=True, is_staff=True)
    user = User.objects.create_user("bench-user", "user@bench.test")
    Token.objects.create(identifier="bench-super-api", key=CALLER_KEYS["bench-super"], user=superuser)
    Token.objects.create(identifier="bench-user-api", key=CALLER_KEYS["bench-user"], user=user)
    group = Group.objects.get(name="group1")
    user.groups.add(group)
    run(
        "UPDATE authentik_core_token SET user_id = %s WHERE identifier IN "
        "(SELECT 'tok-' || n FROM generate_series(1, 50) n)",
        [user.pk],
    )
    view = Permission.objects.get(content_type__app_label="authentik_core", codename="view_token")
    run(
        """
INSERT INTO guardian_userobjectpermission (object_pk, content_type_id, permission_id, user_id)
SELECT md5('tok-' || n)::uuid::text, %s, %s, %s FROM generate_series(1001, 1100) n""",
        [view.content_type_id, view.pk, user.pk],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--tokens", type=int, default=500_000)
    parser.add_argument("--events", type=int, default=5_000_000)
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args()
    if connection.vendor != "postgresql":
        sys.exit("seed_big.py needs PostgreSQL (DATABASE_URL=postgres://...)")
    started = time.monotonic()
    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT EXISTS (SELECT 1 FROM authentik_core_token)")
        if cursor.fetchone()[0]:
            sys.exit("the database already holds tokens; seed an empty one")
    with transaction.atomic():
        seed(args.users, args.tokens, args.events, args.days)
        add_callers()
    run("VACUUM ANALYZE", label="vacuum analyze")
    print(f"seeded in {time.monotonic() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
