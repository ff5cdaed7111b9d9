"""The API docs page (/api/v1/docs): Swagger UI from assets vendored in the package, nothing
fetched from another origin, a Content-Security-Policy that forbids inline scripts; and, where
Debian's chromium is installed, the page rendered by a real browser against a real server."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

import cnnswarm.controller
from support import PageReferences, csp_directives, serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")
ASSETS = Path(cnnswarm.controller.__file__).parent / "docs_assets"
PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"
CONTENT_TYPES = {".js": {"text/javascript", "application/javascript"}, ".css": {"text/css"}}


def test_the_docs_page_loads_every_asset_from_this_controller(client: FlaskClient) -> None:
    page = client.get("/api/v1/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert not re.search(r"(https?:)?//", html), "the page names another origin"

    parsed = PageReferences(html)
    assert parsed.inline_scripts == []
    assert len(parsed.urls) == 4, parsed.urls  # stylesheet, bundle, initializer, document
    for url in parsed.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        asset = client.get(url)
        assert asset.status_code == 200, url
        suffix = Path(parts.path).suffix
        if suffix == ".json":
            assert asset.mimetype == "application/json"
            assert "/api/v1/jobs" in (asset.json or {})["paths"]
        else:
            assert asset.mimetype in CONTENT_TYPES[suffix], (url, asset.mimetype)
            assert asset.headers.get("X-Content-Type-Options") == "nosniff", url
            assert asset.get_data(), url


def test_the_docs_page_is_sent_with_a_strict_content_security_policy(
    client: FlaskClient,
) -> None:
    page = client.get("/api/v1/docs")
    policy = csp_directives(page.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["style-src"] == ["'self'"]
    for sources in policy.values():
        assert not {"*", "'unsafe-inline'", "'unsafe-eval'"} & set(sources), sources
        assert not any(source.startswith(("http:", "https:")) for source in sources), sources
    assert page.headers["X-Content-Type-Options"] == "nosniff"


def test_the_vendored_assets_match_their_note_and_ship_in_the_wheel() -> None:
    """VENDORED.md's hashes are the files' hashes, and pyproject's package-data takes every
    file of controller/docs_assets into the wheel (so into the Docker images)."""
    vendored = ASSETS / "swagger-ui"
    hashes = dict(
        re.findall(r"\| `([^`]+)` \| `([0-9a-f]{64})` \|", (vendored / "VENDORED.md").read_text())
    )
    assert set(hashes) == {path.name for path in vendored.iterdir()} - {"VENDORED.md"}
    for name, expected in hashes.items():
        assert hashlib.sha256((vendored / name).read_bytes()).hexdigest() == expected, name

    package = ASSETS.parent.parent
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path for pattern in patterns["cnnswarm"] for path in package.glob(pattern)}
    files = {path for path in ASSETS.rglob("*") if path.is_file()}
    assert files and files <= shipped, sorted(str(path) for path in files - shipped)


@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),  # under CI=true it must run
    reason="needs Debian's chromium at /usr/bin/chromium (make test installs it as root)",
)
def test_a_browser_renders_every_operation_under_the_page_policy(
    app: Flask, tmp_path: Path
) -> None:
    """Headless chromium loads the page from a real server, runs the vendored Swagger UI under
    the page's Content-Security-Policy and renders the operations of the OpenAPI document."""
    with serve_in_thread(app) as url:
        browser = subprocess.run(
            [
                str(CHROMIUM),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium'}",
                "--enable-logging=stderr",
                # Lets the page fetch the document and render before the DOM is dumped.
                "--virtual-time-budget=20000",
                "--dump-dom",
                f"{url}/api/v1/docs",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert browser.returncode == 0, browser.stderr[-2000:]
    dom = browser.stdout
    for path in ("/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/models/{model_id}/predict"):
        assert f'data-path="{path}"' in dom, (path, dom[-2000:], browser.stderr[-2000:])
    assert "Content Security Policy" not in browser.stderr, browser.stderr[-2000:]
