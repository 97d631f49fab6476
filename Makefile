# The two set-up commands of the README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat requirements-dev.lock | cksum | cut -d' ' -f1)
HOST ?= 127.0.0.1
PORT ?= 8000
PG_URL ?= $(or $(DATABASE_URL),postgres://postgres@127.0.0.1:5432/postgres)
# Fixed, public test values of the keys-at-rest secrets (README, "Keys at rest"): base64 of 32 ASCII bytes.
TEST_TOKEN_KEYS := TOKEN_KEYS_ENCRYPTION_KEYS=test:dGVzdC1vbmx5LWtleS1lbmNyeXB0aW9uLWtleS0zMmI= \
	TOKEN_KEYS_PEPPERS=test:dGVzdC1vbmx5LWxvb2t1cC1kaWdlc3QtcGVwcGVyLTMy
# Tests never touch the local secret file or database.
TEST_ENV := DJANGO_SECRET_KEY=test-only-secret-key-not-for-production DATABASE_URL= SQLITE_PATH=var/test.sqlite3 \
	$(TEST_TOKEN_KEYS)
# A production-like environment for `check --deploy`: a long random secret, HTTPS behind a TLS proxy, HSTS.
DEPLOY_ENV := $(TEST_ENV) DJANGO_SECRET_KEY="$$($(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(50))')" \
	DJANGO_SECURE_SSL=1 DJANGO_SECURE_SSL_REDIRECT=1 DJANGO_BEHIND_TLS_PROXY=1 DJANGO_HSTS_SECONDS=31536000 \
	DJANGO_HSTS_INCLUDE_SUBDOMAINS=1 DJANGO_HSTS_PRELOAD=1 DJANGO_ALLOWED_HOSTS=tokens.example.com

.PHONY: run test venv lint schema system-packages test-sqlite test-postgres coverage bench topology

$(STAMP): requirements-dev.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.lock
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

# Debian packages the tests need (Chromium for the browser tests): installed with apt-get when running as
# root, otherwise a missing one stops here with the exact command to run.
system-packages:
	@PYTHON="$(PYTHON)" VENV="$(VENV)" sh scripts/ensure-system-packages.sh

# Serve the API with gunicorn: SQLite in var/ by default, PostgreSQL when DATABASE_URL is set.
run: $(STAMP)
	@mkdir -p var
	@# Local files: var/ is 0700; the database, its journals and everything else the server creates are 0600.
	@chmod 700 var; for f in var/*.sqlite3 var/*.sqlite3-*; do [ ! -e "$$f" ] || chmod 600 "$$f"; done
	@test -s var/secret_key || (umask 077; $(BIN)/python -c "import secrets; print(secrets.token_urlsafe(50))" > var/secret_key)
	@test -s var/token_keys || (umask 077; $(BIN)/python -c "import base64, secrets; [print('local1:' + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()) for _ in 'kp']" > var/token_keys)
	@umask 077; \
	export DJANGO_SECRET_KEY="$${DJANGO_SECRET_KEY:-$$(cat var/secret_key)}" DJANGO_SECURE_SSL="$${DJANGO_SECURE_SSL:-0}"; \
	export TOKEN_KEYS_ENCRYPTION_KEYS="$${TOKEN_KEYS_ENCRYPTION_KEYS:-$$(sed -n 1p var/token_keys)}" TOKEN_KEYS_PEPPERS="$${TOKEN_KEYS_PEPPERS:-$$(sed -n 2p var/token_keys)}"; \
	set -e; \
	$(BIN)/python manage.py migrate --noinput -v 0; \
	$(BIN)/python manage.py collectstatic --noinput -v 0; \
	$(BIN)/python manage.py bootstrap --base-url "http://$(HOST):$(PORT)"; \
	exec $(BIN)/gunicorn -c tokens_service/gunicorn_conf.py --bind "$(HOST):$(PORT)" tokens_service.wsgi:application

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(TEST_ENV) $(BIN)/mypy core events tokens_service

# Regenerate the committed OpenAPI schema (tests/api/test_schema.py fails while it is stale).
schema: $(STAMP)
	$(TEST_ENV) $(BIN)/python manage.py spectacular --validate --fail-on-warn --file schema.yml

# Every gate CI runs, then the two database lanes side by side (scripts/test-lanes.sh: each lane's output
# in var/test-sqlite.log and var/test-postgres.log, its result printed at the end, a failed lane's whole
# log shown). PostgreSQL lane: run when reachable; with REQUIRE_POSTGRES=1 unreachable fails at once.
# Branch coverage of both lanes together must reach the floor in pyproject.toml ([tool.coverage.report]
# fail_under); without the PostgreSQL lane the figure is printed but not enforced.
test: system-packages lint
	DJANGO_DEBUG=1 $(TEST_ENV) $(BIN)/python manage.py makemigrations --check --dry-run
	$(TEST_ENV) $(BIN)/python manage.py check
	$(TEST_ENV) $(BIN)/python manage.py spectacular --validate --fail-on-warn --file /dev/null
	$(DEPLOY_ENV) $(BIN)/python manage.py check --deploy --fail-level WARNING
	$(TEST_ENV) $(BIN)/python manage.py collectstatic --noinput -v 0
	@mkdir -p var/coverage
	$(BIN)/coverage erase
	@if $(BIN)/python -c "import psycopg,sys; psycopg.connect(sys.argv[1], connect_timeout=3).close()" "$(PG_URL)" 2>/dev/null; then \
		MAKE="$(MAKE)" bash scripts/test-lanes.sh sqlite postgres && $(MAKE) --no-print-directory coverage; \
	elif [ "$(REQUIRE_POSTGRES)" = "1" ]; then \
		echo "PostgreSQL is not reachable at DATABASE_URL or 127.0.0.1:5432 and REQUIRE_POSTGRES=1" >&2; exit 1; \
	else \
		MAKE="$(MAKE)" bash scripts/test-lanes.sh sqlite && $(MAKE) --no-print-directory coverage COVERAGE_FLOOR=0 && \
		echo "PostgreSQL not reachable: the PostgreSQL lane (locking and race tests) was NOT run," && \
		echo "and the coverage floor (both lanes together) was not enforced."; \
	fi

# One lane alone, in the foreground. Each lane adds its own coverage data file to var/coverage/
# (parallel = true in pyproject.toml), so the two may run at once; `make coverage` combines and reports them.
# TEST_PORTS: each lane's servers listen on ports of its own range, below the kernel's ephemeral ports
# (tests/helpers.py, free_port).
test-sqlite: $(STAMP)
	@mkdir -p var/coverage
	$(TEST_ENV) TEST_PORTS=20000-24999 $(BIN)/coverage run -m pytest $(PYTEST_ARGS)

test-postgres: $(STAMP)
	@mkdir -p var/coverage
	$(TEST_ENV) TEST_PORTS=26000-30999 DATABASE_URL="$(PG_URL)" $(BIN)/coverage run -m pytest $(PYTEST_ARGS)

# Combine the lanes' data and report branch coverage; COVERAGE_FLOOR overrides pyproject.toml's fail_under.
coverage: $(STAMP)
	$(BIN)/coverage combine -q
	$(BIN)/coverage report $(if $(COVERAGE_FLOOR),--fail-under=$(COVERAGE_FLOOR))

# The deployed topology on 127.0.0.1 (HAProxy, three replicas, PgBouncer, PostgreSQL, Redis; 30-45 s):
# the same test `make test` runs in its PostgreSQL lane, alone and verbose. Needs: apt-get install haproxy pgbouncer.
topology: $(STAMP)
	$(TEST_ENV) DATABASE_URL="$(PG_URL)" $(BIN)/pytest tests/live/test_topology.py -v -s

# The performance benchmark (not part of `make test`): service versus a framework-free baseline on
# PostgreSQL under gunicorn, driven by wrk (installed with apt-get when missing). About 7 minutes.
# BENCH_PG names the server (default postgres://postgres@127.0.0.1:5432); BENCH_ARGS e.g. "--duration 5".
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)
