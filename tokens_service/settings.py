"""Settings for tokens-service, read from the environment only (see README, "Configuration")."""

import base64
import binascii
import hashlib
import ipaddress
import os
import re
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG")

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required unless DJANGO_DEBUG is on.")
    SECRET_KEY = "insecure-debug-only-secret-key-do-not-use-in-production"  # noqa: S105

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "guardian",
    "core",
    "events",
]

MIDDLEWARE = [
    "tokens_service.middleware.RequestIdMiddleware",
    # One JSON access line per request; outside everything but the request id, so it sees every answer.
    "tokens_service.logging.RequestLogMiddleware",
    # Database down or locked: 503 JSON from any view, not only the API (see the 500 handler for the rest).
    "tokens_service.middleware.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Before WhiteNoise, so static files carry X-Frame-Options too: security headers on every response.
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Serves the collected admin and docs static files (STATIC_ROOT) from the app process itself.
    # The tokens_service.browser_middleware classes are Django's (and WhiteNoise's), skipped for API requests
    # authenticated by their Authorization header alone (tokens_service.middleware.BrowserOnlyMiddleware).
    # Sessions and CSRF stay Django's own classes: `check --deploy` finds them by name to check their cookies.
    "tokens_service.browser_middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "tokens_service.browser_middleware.AuthenticationMiddleware",
    "tokens_service.browser_middleware.MessageMiddleware",
]

ROOT_URLCONF = "tokens_service.urls"
WSGI_APPLICATION = "tokens_service.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: an embedded SQLite file unless DATABASE_URL names another database.
SQLITE_PATH = Path(os.environ.get("SQLITE_PATH", BASE_DIR / "var" / "db.sqlite3"))
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{SQLITE_PATH}",
        # One persistent connection per worker thread. At the start of each request the middleware
        # (tokens_service.middleware.close_connections_the_server_ended) polls its socket, without a round
        # trip, and drops it if the server hung up, so once a restarted PostgreSQL is back no request fails.
        # Django's own health check (a SELECT 1 round trip per request) stays available: DB_CONN_HEALTH_CHECKS=1.
        # Measured against psycopg's pool (Django's OPTIONS["pool"]): the same per-request cost, but after a
        # restart the pool's reconnect backoff kept answering 503 for a while; with sync workers a pool buys
        # nothing. See README.
        conn_max_age=env_int("DB_CONN_MAX_AGE", 600),
        conn_health_checks=env_bool("DB_CONN_HEALTH_CHECKS"),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Only the service's user may read the database directory (keys are stored in the database).
    Path(DATABASES["default"]["NAME"]).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Fail fast instead of hanging a worker: the timeouts are turned into 503 answers. A transaction
    # left idle (a frozen or partitioned worker holding a token's row lock) is ended by the server.
    # No parallel workers by default: every request reads a bounded number of rows, and a parallel plan
    # only adds its workers' start-up; worse, for a count of at most 1,001 matches each worker reads a
    # whole month of matches before the first row comes back (README, "Scale").
    # Behind PgBouncer these startup options are not passed on: set them on the role instead (README).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "connect_timeout": env_int("DB_CONNECT_TIMEOUT", 3),
            # A database host that vanished (network partition, dead VM) under an open connection:
            # unacknowledged data for this long closes it (Linux), and idle connections are probed.
            "tcp_user_timeout": env_int("DB_TCP_USER_TIMEOUT_MS", 10000),
            "keepalives": 1,
            "keepalives_idle": 30,
            "keepalives_interval": 10,
            "keepalives_count": 3,
            "options": (
                f"-c lock_timeout={env_int('DB_LOCK_TIMEOUT_MS', 3000)}"
                f" -c statement_timeout={env_int('DB_STATEMENT_TIMEOUT_MS', 10000)}"
                f" -c idle_in_transaction_session_timeout={env_int('DB_IDLE_IN_TRANSACTION_TIMEOUT_MS', 60000)}"
                f" -c max_parallel_workers_per_gather={env_int('DB_MAX_PARALLEL_WORKERS_PER_GATHER', 0)}"
            ),
        }
    )
    # Transaction-mode PgBouncer cannot keep a server-side cursor open across transactions.
    DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = env_bool("DB_DISABLE_SERVER_SIDE_CURSORS")
    # Prepared statements: parameters bound by the server, and a statement run 5 times on a connection
    # is prepared, so PostgreSQL parses and plans the per-request statements (bearer lookup, permission
    # check, set_key's write) once per connection, not on every request: about half the database CPU
    # of a set_key (README, "Performance"). Off (DB_PREPARED_STATEMENTS=0) behind a transaction-mode
    # PgBouncer that does not track prepared statements (before 1.21, or max_prepared_statements = 0).
    # Only statements whose plan suits every parameter value are prepared (tokens_service.db): a generic
    # plan made for an average filter value read millions of rows for a rare one.
    if env_bool("DB_PREPARED_STATEMENTS", default=True):
        from tokens_service.db import SelectivelyPreparedCursor

        DATABASES["default"]["OPTIONS"].update(
            {"server_side_binding": True, "prepare_threshold": 5, "cursor_factory": SelectivelyPreparedCursor}
        )
else:
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": env_int("SQLITE_TIMEOUT_S", 5), "transaction_mode": "IMMEDIATE"}
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "authentik_core.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or BASE_DIR / "staticfiles")
# collectstatic writes compressed copies that WhiteNoise serves to clients accepting them. Not the
# manifest (hashed names) variant: it would make every page fail until collectstatic has run, tests included.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Security headers on every response; HTTPS-only settings follow DJANGO_SECURE_SSL.
SECURE_SSL = env_bool("DJANGO_SECURE_SSL", default=not DEBUG)
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("DJANGO_BEHIND_TLS_PROXY") else None
SESSION_COOKIE_SECURE = SECURE_SSL
CSRF_COOKIE_SECURE = SECURE_SSL
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS")
SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD")
# Load balancers and orchestrators probe over plain HTTP inside the network.
SECURE_REDIRECT_EXEMPT = [r"^-/health/"]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Request bodies: a key is at most 1024 characters, so nothing legitimate is close to this.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BODY_BYTES", 64 * 1024)
# A request body must arrive completely within this many seconds, or the answer is 408 and the connection
# is closed (tokens_service.wsgi_hardening): a client trickling its body holds a server thread no longer.
REQUEST_BODY_TIMEOUT = env_int("REQUEST_BODY_TIMEOUT", 10)

# Client IP: the socket peer, unless it is one of these proxies (docs/contract.md, "Audit trail").
TRUSTED_PROXY_CIDRS = [ipaddress.ip_network(cidr, strict=False) for cidr in env_list("TRUSTED_PROXY_CIDRS")]


# Keys at rest (core.crypto, README "Keys at rest"). Each variable is a comma-separated list of versioned
# secrets, "id:base64"; the first one is current (encrypts, or digests new keys), every one is accepted.
# Like the secret key they are required unless DEBUG is on; they never live in the database.
def env_versioned_secrets(name: str, *, min_bytes: int, max_bytes: int) -> tuple[tuple[str, bytes], ...]:
    """``id:base64,...`` from the environment as ``((id, secret), ...)``, current first; bad input stops the start."""
    entries: list[tuple[str, bytes]] = []
    for item in env_list(name):
        key_id, sep, encoded = item.partition(":")
        if not sep or not re.fullmatch(r"[a-z0-9]{1,8}", key_id):
            raise ImproperlyConfigured(f"{name}: each entry must be id:base64 with an id of 1-8 of [a-z0-9].")
        try:
            secret = base64.urlsafe_b64decode(encoded.strip().replace("+", "-").replace("/", "_") + "==")
        except (ValueError, binascii.Error):
            raise ImproperlyConfigured(f"{name}: the secret of id {key_id!r} is not base64.") from None
        if not min_bytes <= len(secret) <= max_bytes:
            size = f"{min_bytes}" if min_bytes == max_bytes else f"{min_bytes} to {max_bytes}"
            raise ImproperlyConfigured(f"{name}: the secret of id {key_id!r} must be {size} random bytes.")
        if key_id in dict(entries):
            raise ImproperlyConfigured(f"{name}: the id {key_id!r} appears twice.")
        entries.append((key_id, secret))
    if not entries:
        if not DEBUG:
            raise ImproperlyConfigured(f'{name} is required unless DJANGO_DEBUG is on (README, "Keys at rest").')
        # A fixed, public development value: never protects anything.
        entries.append(("debug", hashlib.sha256(f"insecure-debug-only-{name}".encode()).digest()))
    return tuple(entries)


# AES-256-GCM keys (exactly 32 bytes) that encrypt the stored keys.
TOKEN_KEYS_ENCRYPTION_KEYS = env_versioned_secrets("TOKEN_KEYS_ENCRYPTION_KEYS", min_bytes=32, max_bytes=32)
# HMAC-SHA256 peppers (at least 32 bytes) of the lookup and uniqueness digest.
TOKEN_KEYS_PEPPERS = env_versioned_secrets("TOKEN_KEYS_PEPPERS", min_bytes=32, max_bytes=64)
# Generated keys: this prefix, 50 random base62 characters, a 6-character base62 CRC32 of them.
TOKEN_KEY_PREFIX = os.environ.get("TOKEN_KEY_PREFIX", "tks_")
if not re.fullmatch(r"[a-z][a-z0-9]{1,9}_", TOKEN_KEY_PREFIX):
    raise ImproperlyConfigured("TOKEN_KEY_PREFIX must be 2-10 of [a-z0-9] (starting with a letter) and a final _.")

# Key policy and audit retention.
TOKEN_KEY_MIN_LENGTH = env_int("TOKEN_KEY_MIN_LENGTH", 1)
TOKEN_KEY_MAX_LENGTH = 1024
EVENT_RETENTION = timedelta(days=env_int("EVENT_RETENTION_DAYS", 365))


def env_rate(name: str, default: str) -> str | None:
    """A DRF throttle rate such as ``20/min`` from the environment; ``off`` disables the throttle."""
    value = os.environ.get(name, "").strip() or default
    if value.lower() == "off":
        return None
    if not re.fullmatch(r"[1-9][0-9]*/(s|sec|second|m|min|minute|h|hour|d|day)", value):
        raise ImproperlyConfigured(f"{name} must look like 20/min (or be off), not {value!r}.")
    return value


# Abuse limits (tokens_service.throttling). Their counters live in the default cache: Redis when
# REDIS_URL is set, which every worker and replica shares; otherwise per-process memory, where each
# worker process counts on its own. The cache never holds a key or a digest, only counters.
REDIS_URL = os.environ.get("REDIS_URL", "")
CACHES = {
    "default": (
        {
            # Django's Redis backend, sharing one client per connection pool (tokens_service.cache).
            "BACKEND": "tokens_service.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": os.environ.get("CACHE_KEY_PREFIX", "tokens-service"),
            # A slow or absent Redis costs a request at most this long; the throttles then fail open.
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tokens-service"}
    )
}
# Defaults bound abuse without getting in the way of honest automation: guessing a 60-character random key
# is hopeless at any rate, so the failure limit is about load and noise, and 100 rotations a second per
# caller is far above what a rotation job needs.
THROTTLE_AUTH_FAILURES = env_rate("THROTTLE_AUTH_FAILURES", "600/min")
THROTTLE_SET_KEY = env_rate("THROTTLE_SET_KEY", "6000/min")
# A key that collides with another token's key is a guess that hit: low on purpose (per caller and per address).
THROTTLE_KEY_COLLISIONS = env_rate("THROTTLE_KEY_COLLISIONS", "5/min")
# Hand-written SQL for the hot paths on PostgreSQL (core.fastpath); off runs the ORM contract path.
TOKENS_FAST_PATH = env_bool("TOKENS_FAST_PATH", default=True)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["tokens_service.parsers.StrictJSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "tokens_service.pagination.Pagination",
    "PAGE_SIZE": 20,
    "EXCEPTION_HANDLER": "tokens_service.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
    # Failed bearer authentications are counted by the authenticator itself (per client IP); this
    # class limits viewset actions per caller, for the actions named in the rates below.
    "DEFAULT_THROTTLE_CLASSES": ["tokens_service.throttling.UserActionThrottle"],
    "DEFAULT_THROTTLE_RATES": {
        "auth_failures": THROTTLE_AUTH_FAILURES,
        "set_key": THROTTLE_SET_KEY,
        "key_collisions": THROTTLE_KEY_COLLISIONS,
        # rotate shares set_key's rate (THROTTLE_SET_KEY), counted separately.
        "rotate": THROTTLE_SET_KEY,
    },
}
# Failed admin logins (core/admin_login.py): passwords can be guessed, so these are tight.
THROTTLE_ADMIN_LOGIN_ADDRESS = env_rate("THROTTLE_ADMIN_LOGIN_ADDRESS", "20/min")
THROTTLE_ADMIN_LOGIN_USERNAME = env_rate("THROTTLE_ADMIN_LOGIN_USERNAME", "5/min")
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"].update(  # type: ignore[attr-defined]
    {"admin_login_address": THROTTLE_ADMIN_LOGIN_ADDRESS, "admin_login_username": THROTTLE_ADMIN_LOGIN_USERNAME}
)

SPECTACULAR_SETTINGS = {
    "TITLE": "tokens-service",
    "DESCRIPTION": "Token and audit-event API compatible with authentik's /api/v3/.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Paths are documented once, relative to either mount (tokens_service.schema drops the /api/v3 copies).
    "SERVERS": [
        {"url": "/api/v3", "description": "authentik's base path"},
        {"url": "/", "description": "root mount (same views)"},
    ],
    "PREPROCESSING_HOOKS": ["tokens_service.schema.drop_duplicate_mount"],
    # drf-spectacular's own enum hook first, then the components the pagination envelope refers to.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tokens_service.schema.add_shared_components",
        "tokens_service.schema.add_error_responses",
        "tokens_service.schema.allow_empty_filter_values",
        "tokens_service.schema.drop_unreferenced_components",
    ],
    # "" makes tags and operationIds start at the first path segment: core, core_tokens_set_key_create.
    "SCHEMA_PATH_PREFIX": "",
    # Only the Bearer scheme is documented (as "authentik", like the reference); session login still
    # works at runtime for the admin and the docs pages.
    "AUTHENTICATION_WHITELIST": ["core.authentication.BearerTokenAuthentication"],
    # The schema and the docs pages describe a public contract: readable without logging in.
    "SERVE_PUBLIC": True,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # No calls to swagger.io's online validator: the docs page talks only to this server.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    # authentik's enum component names (the default would name them after the fields: ActionEnum, TypeEnum).
    "ENUM_NAME_OVERRIDES": {
        "EventActions": "events.models.EventAction",
        "UserTypeEnum": "core.models.UserTypes",
    },
}

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
# JSON lines on stderr (LOG_FORMAT=plain for a terminal). Both formatters redact credentials that a
# library might quote; the request log is tokens_service.logging.RequestLogMiddleware.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "tokens_service.logging.JsonFormatter"},
        "plain": {"()": "tokens_service.logging.PlainFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain" if os.environ.get("LOG_FORMAT", "json").lower() == "plain" else "json",
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Replaces Django's default handlers for "django" (console only under DEBUG, mail_admins, whose
        # reports carry request details): everything goes through the redacting root handler.
        "django": {"handlers": [], "level": LOG_LEVEL, "propagate": True},
        # 4xx answers are already in the request log; 5xx stay here with their traceback.
        "django.request": {"level": "ERROR", "propagate": True},
        # Django's SQL log prints query parameters, which include keys (an UPDATE of the key column):
        # it must never reach DEBUG, whatever LOG_LEVEL says.
        "django.db.backends": {"level": "WARNING", "propagate": True},
        # At DEBUG it reports failed variable lookups with the template context, which may hold a form.
        "django.template": {"level": "INFO", "propagate": True},
    },
}
# Error reports (the DEBUG 500 page, mail to ADMINS) mask POST values and frame variables, not only settings.
DEFAULT_EXCEPTION_REPORTER_FILTER = "tokens_service.logging.SecretSafeExceptionReporterFilter"
CSRF_FAILURE_VIEW = "tokens_service.views.csrf_failure"

# django-guardian: no anonymous-user row (anonymous callers never hold permissions here).
ANONYMOUS_USER_NAME = None
GUARDIAN_MONKEY_PATCH_USER = False
