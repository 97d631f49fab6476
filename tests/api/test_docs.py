"""The OpenAPI schema endpoint and the Swagger UI / Redoc pages (public, built from local files only), and the
project's own documentation (self-contained: nothing outside the repository is read or cited)."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.urls import reverse

from tests.helpers import ROOT

SET_KEY_PATH = "/core/tokens/{identifier}/set_key/"


def test_schema_is_openapi_3_yaml_by_default_and_public(client):
    response = client.get(reverse("schema"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi")
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    assert SET_KEY_PATH in schema["paths"]


@pytest.mark.parametrize(
    ("query", "accept"),
    [({"format": "json"}, "*/*"), ({}, "application/json"), ({}, "application/vnd.oai.openapi+json")],
)
def test_schema_is_served_as_json_on_request(query, accept, client):
    response = client.get(reverse("schema"), query, HTTP_ACCEPT=accept)
    assert response.status_code == 200
    assert "json" in response["Content-Type"]
    assert json.loads(response.content)["openapi"].startswith("3.")


def test_schema_documents_each_path_once_with_both_servers_and_the_bearer_scheme(client):
    schema = client.get(reverse("schema"), {"format": "json"}).json()
    assert [server["url"] for server in schema["servers"]] == ["/api/v3", "/"]
    assert not [path for path in schema["paths"] if path.startswith("/api/v3/")]
    assert schema["components"]["securitySchemes"] == {"authentik": {"type": "http", "scheme": "bearer"}}
    operation = schema["paths"][SET_KEY_PATH]["post"]
    assert operation["operationId"] == "core_tokens_set_key_create"
    assert operation["security"] == [{"authentik": []}]
    assert operation["tags"] == ["core"]


def test_schema_is_the_same_for_a_logged_in_user(client, superuser):
    anonymous = client.get(reverse("schema"), {"format": "json"}).json()
    client.force_login(superuser)
    assert client.get(reverse("schema"), {"format": "json"}).json() == anonymous


def test_every_reference_in_the_schema_resolves(client):
    # openapi-spec-validator accepts a dangling $ref inside a component; Redoc then refuses to render.
    text = client.get(reverse("schema"), {"format": "json"}).content.decode()
    schema = json.loads(text)
    refs = set(re.findall(r'"\$ref": "#/components/(\w+)/([\w.-]+)"', text))
    assert refs
    assert sorted(ref for ref in refs if ref[1] not in schema["components"].get(ref[0], {})) == []


def test_schema_generates_without_warnings_and_validates(tmp_path):
    # --fail-on-warn turns any drf-spectacular warning (an unresolvable serializer, a guessed type) into a failure.
    out = tmp_path / "schema.yml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))
    assert yaml.safe_load(out.read_text())["openapi"].startswith("3.")


def asset_urls(html: str) -> list[str]:
    return re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)


@pytest.mark.parametrize(
    ("name", "must_load"),
    [
        ("schema-swagger-ui", ["swagger-ui-bundle.js", "swagger-ui-standalone-preset.js", "swagger-ui.css"]),
        ("schema-redoc", ["redoc.standalone.js"]),
    ],
)
def test_docs_pages_load_only_local_static_files(name, must_load, client, settings):
    response = client.get(reverse(name))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.IGNORECASE), (
        "the page references another host"
    )
    urls = asset_urls(html)
    assert urls
    for filename in must_load:
        assert any(url.endswith(filename) for url in urls), filename
    for url in urls:
        assert url.startswith("/" + settings.STATIC_URL.lstrip("/")), url
        assert finders.find(url.removeprefix("/" + settings.STATIC_URL.lstrip("/"))), f"{url} is not a static file"
    assert reverse("schema") in html
    # The browser enforces it too: anything a bundle tries to fetch from elsewhere is blocked.
    csp = response["Content-Security-Policy"]
    assert "default-src 'self'" in csp
    assert "img-src 'self' data:" in csp
    assert "connect-src 'self'" in csp


# --- the repository is self-contained ---------------------------------------------------------------

# Paths and names of the workspace the project was first written in, which a clone does not have. The
# patterns are spelled so that this file does not match them itself.
OUTSIDE_REFERENCES = re.compile(r"\.\./shared|/work/[s]hared|[s]hared/reference/|\b[S]PEC\b")
NOT_SCANNED = {
    ".git",
    ".venv",
    "var",
    "staticfiles",
    "artifacts",
    "__pycache__",
    ".hypothesis",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
}


def repository_files() -> list[Path]:
    """The tracked files (``git ls-files``), or every file outside build and cache folders without git."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30
        ).stdout.decode()
        return [ROOT / name for name in listed.split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        return [
            path
            for path in ROOT.rglob("*")
            if path.is_file() and not NOT_SCANNED.intersection(path.relative_to(ROOT).parts[:-1])
        ]


def test_no_file_reads_or_cites_anything_outside_the_repository():
    found = []
    for path in repository_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_REFERENCES.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert found == [], "cite docs/contract.md or vendor the file under tests/reference/ instead"


def test_every_contract_section_cited_exists():
    contract = (ROOT / "docs" / "contract.md").read_text()
    headings = set(re.findall(r"^## (.+)$", contract, flags=re.MULTILINE))
    cited = {
        (str(path.relative_to(ROOT)), section)
        for path in repository_files()
        if path.suffix in {".py", ".md"} and path.exists()
        for section in re.findall(r'docs/contract\.md, "([^"]+)"', path.read_text(encoding="utf-8"))
    }
    assert cited, "no code cites docs/contract.md"
    assert sorted((where, section) for where, section in cited if section not in headings) == []


def test_the_vendored_reference_schema_is_the_one_documented():
    import hashlib

    reference = ROOT / "tests" / "reference"
    digest = hashlib.sha256((reference / "authentik-openapi-excerpt.yml").read_bytes()).hexdigest()
    assert digest in (reference / "README.md").read_text(), "update tests/reference/README.md with the new origin"
