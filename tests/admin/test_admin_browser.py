"""The admin and the docs pages driven in headless Chromium (Debian's package) through Playwright.

Run with ``pytest -m browser``. Each step leaves a PNG in ``artifacts/screenshots/<lane>/`` (git-ignored).
Chromium is a machine requirement (``.ci/run`` installs it): when it is missing these tests fail, they
do not skip, so a CI run without a browser cannot pass unnoticed.
"""

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from guardian.shortcuts import get_perms

from core.models import Token, User, generate_key
from events.models import Event, EventAction
from tests.helpers import ON_POSTGRES, ROOT

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# One folder per database lane: `make test` runs the two lanes at the same time.
SCREENSHOTS = ROOT / "artifacts" / "screenshots" / ("postgresql" if ON_POSTGRES else "sqlite")
PASSWORD = "a-long-admin-passphrase-for-tests"

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


class Browser:
    """A page plus what the test checks across steps: every HTML document seen and every URL requested."""

    def __init__(self, page: Any, base_url: str, prefix: str) -> None:
        self.page = page
        self.base_url = base_url
        self.prefix = prefix
        self.documents: list[str] = []
        self.requested: list[str] = []
        self.blocked_by_csp: list[str] = []
        self.step = 0
        page.on("request", lambda request: self.requested.append(request.url))
        page.on("requestfailed", self._failed)

    def _failed(self, request: Any) -> None:
        # Chromium reports a request its Content-Security-Policy refused as failure "csp".
        if (request.failure or "").lower() in {"csp", "net::err_blocked_by_csp"}:
            self.blocked_by_csp.append(request.url)

    def shot(self, name: str, *, full_page: bool = True) -> None:
        """Screenshot the current page, and keep its HTML for the secret checks."""
        self.step += 1
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{self.prefix}-{self.step:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        self.documents.append(self.page.content())

    def goto(self, path: str) -> None:
        response = self.page.goto(path)
        assert response is not None
        assert response.ok, f"{path}: HTTP {response.status}"

    def foreign_requests(self) -> list[str]:
        """Requests to another host that left the browser (the page's CSP stops some before they do)."""
        return [
            url
            for url in self.requested
            if not url.startswith((self.base_url, "data:", "blob:")) and url not in self.blocked_by_csp
        ]


def chromium_or_fail() -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: these browser tests need Debian's Chromium "
            "(apt-get install -y chromium chromium-driver; .ci/run installs it)."
        )


@pytest.fixture
def browser(request: pytest.FixtureRequest, live_server: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Browser]:
    chromium_or_fail()
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an asyncio loop running in this thread; the ORM calls the test makes
    # between browser steps are still ordinary synchronous calls, so Django's async guard is lifted here.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = chromium.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(20_000)
        try:
            yield Browser(page, live_server.url, prefix=request.node.name.removeprefix("test_").split("_")[0])
        finally:
            context.close()
            chromium.close()
            # The ORM calls made while Playwright's loop ran opened their own connection (Django keeps
            # connections per async context); left open, it stops PostgreSQL from dropping the test database.
            connections.close_all()


@pytest.fixture
def secure_cookies_over_http(settings: Any) -> None:
    # The live server speaks plain HTTP; production settings mark cookies Secure.
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False


def test_admin_token_flow(browser: Browser, secure_cookies_over_http: None) -> None:
    """Log in, create a token, grant an object permission, set the key, see the event; the key is never shown."""
    page = browser.page
    User.objects.create_superuser("akadmin", "akadmin@example.test", PASSWORD)
    owner = User.objects.create_user("ci-robot", "ci-robot@example.test")
    grantee = User.objects.create_user("alice", "alice@example.test")

    # 1. Log in.
    browser.goto("/admin/")
    page.fill("#id_username", "akadmin")
    page.fill("#id_password", PASSWORD)
    browser.shot("login")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")
    assert page.url.endswith("/admin/")
    browser.shot("admin-index")

    # 2. Create a token through the add form (the key is generated by the service, never typed).
    browser.goto("/admin/authentik_core/token/add/")
    assert page.locator("input[name=key]").count() == 0
    page.fill("#id_identifier", "browser-made-token")
    page.click(".field-user .select2-selection")
    page.fill(".select2-search__field", "ci-robot")
    page.click(".select2-results__option:has-text('ci-robot')")
    page.fill("#id_description", "created in a real browser")
    browser.shot("token-add-form")
    page.click("input[name=_continue]")
    page.wait_for_selector("ul.messagelist li.success")
    token = Token.objects.get(identifier="browser-made-token")
    assert token.user == owner
    created_key = token.key
    assert Event.objects.filter(action=EventAction.MODEL_CREATED, context__model__name=token.identifier).count() == 1
    browser.shot("token-created")

    # 3. Grant alice the object permission set_token_key on it (django-guardian's pages).
    page.click("a.permissionslink")
    page.wait_for_selector("#user-permissions")
    page.fill("#id_user", "alice")
    browser.shot("object-permissions")
    page.click("input[name=submit_manage_user]")
    page.wait_for_selector("#id_permissions_from")
    page.select_option("#id_permissions_from", value="set_token_key")
    page.click("#id_permissions_add")
    browser.shot("grant-set-token-key")
    page.click("#content-main input[type=submit]")
    page.wait_for_selector("ul.messagelist li.success")
    assert get_perms(grantee, token) == ["set_token_key"]
    browser.shot("permission-granted")

    # 4. Set the key from the admin: a refused key first (the API's rule), then a good one.
    browser.goto(f"/admin/authentik_core/token/{token.pk}/change/")
    page.click("a.setkeylink")
    page.wait_for_selector("#token_set_key_form")
    assert page.get_attribute("#id_key", "type") == "password"
    page.fill("#id_key", "two words")
    page.click("input[name=_set_key]")
    page.wait_for_selector(".errorlist")
    assert "visible ASCII" in page.inner_text(".errorlist")
    assert page.input_value("#id_key") == ""
    browser.shot("set-key-refused")
    new_key = generate_key()
    page.fill("#id_key", new_key)
    browser.shot("set-key-form")
    page.click("input[name=_set_key]")
    page.wait_for_selector("ul.messagelist li.success")
    assert "was replaced" in page.inner_text("ul.messagelist")
    token.refresh_from_db()
    assert token.key == new_key
    browser.shot("key-set")

    # 5. The event is in the event admin, with the actor and the changed field, without the key.
    browser.goto("/admin/authentik_events/event/?action=model_updated")
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == 2  # the grant of set_token_key (step 3) and, newest first, the key change
    assert "akadmin" in rows.first.inner_text()
    browser.shot("event-list")
    rows.first.locator("th a, td a").first.click()
    page.wait_for_selector(".field-context_json")
    assert "key_fingerprint" in page.inner_text(".field-context_json")
    assert page.locator("input[name=_save]").count() == 0
    browser.shot("event-detail")

    # 6. Pages that list or show the token, visited last, after the key changed.
    browser.goto("/admin/authentik_core/token/?q=browser")
    browser.shot("token-list")
    browser.goto(f"/admin/authentik_core/token/{token.pk}/change/")
    browser.shot("token-change")
    browser.goto(f"/admin/authentik_core/token/{token.pk}/history/")
    browser.shot("token-history")

    for html in browser.documents:
        for secret in (created_key, new_key, token.key_digest):
            assert secret not in html
    assert browser.foreign_requests() == []


def test_docs_swagger_ui_and_redoc_render_the_set_key_operation(browser: Browser) -> None:
    page = browser.page
    browser.goto("/api/v3/schema/swagger-ui/")
    operation = page.locator("#operations-core-core_tokens_set_key_create")
    operation.wait_for()
    assert "/core/tokens/{identifier}/set_key/" in operation.inner_text()
    browser.shot("swagger-ui")
    operation.locator(".opblock-summary").first.click()
    page.get_by_text("Successfully changed key").wait_for()
    assert "Token not found or expired" in operation.inner_text()
    browser.shot("swagger-set-key-operation")

    browser.goto("/api/v3/schema/redoc/")
    heading = page.locator("h2", has_text=re.compile("core_tokens_set_key_create|Set token key")).first
    heading.wait_for()
    page.wait_for_load_state("networkidle")
    heading.scroll_into_view_if_needed()
    browser.shot("redoc-set-key", full_page=False)  # the whole Redoc page is ~16000 px tall

    assert browser.foreign_requests() == []
    # Redoc's "API docs by Redocly" badge asks cdn.redoc.ly for its logo; the docs CSP must stop it.
    assert browser.blocked_by_csp == ["https://cdn.redoc.ly/redoc/logo-mini.svg"]
    assert any(url.endswith("swagger-ui-bundle.js") for url in browser.requested)
    assert any(url.endswith("redoc.standalone.js") for url in browser.requested)
