"""The dashboard's pages and the dataset samples routes, in process (Flask's test client): every
page is sent with a strict Content-Security-Policy, has no inline script and loads only assets
of this controller; the vendored uPlot is the one its note names and ships in the wheel; ids
in page URLs are escaped; the submit form is the train options' declaration; a browser asking
for ``/`` is sent to the dashboard while the seed's clients keep their answer; the samples
routes answer the dataset's own counts and pixels."""

from __future__ import annotations

import hashlib
import io
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

import cnnswarm.controller.ui
from cnnswarm.config import Settings
from cnnswarm.controller.app import create_app
from cnnswarm.ml.datasets.registry import load_builtin
from cnnswarm.ml.train_options import TrainOptions
from support import PageReferences, csp_directives

UI = Path(cnnswarm.controller.ui.__file__).parent
PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"
PAGES = [
    "/ui/",
    "/ui/jobs/job-0123456789abcdef",
    "/ui/models",
    "/ui/models/some-model",
    "/ui/datasets",
    "/ui/datasets/digits",
    "/ui/trainers",
    "/ui/sweeps",
    "/ui/sweeps/sweep-0123456789abcdef",
]
CONTENT_TYPES = {
    ".js": {"text/javascript", "application/javascript"},
    ".css": {"text/css"},
    ".svg": {"image/svg+xml"},
}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    application = create_app(Settings(home_dir=tmp_path / "home"))
    yield application
    application.extensions["cnnswarm"].stores.close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.mark.parametrize("path", PAGES)
def test_every_page_has_a_strict_policy_no_inline_code_and_only_local_assets(
    client: FlaskClient, path: str
) -> None:
    page = client.get(path)
    assert page.status_code == 200 and page.mimetype == "text/html"
    policy = csp_directives(page.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]
    assert policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    for sources in policy.values():
        assert not {"*", "'unsafe-inline'", "'unsafe-eval'"} & set(sources), sources
        assert not any(source.startswith(("http:", "https:")) for source in sources), sources
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "no-referrer"

    html = page.get_data(as_text=True)
    assert not re.search(r"(https?:)?//", html), "the page names another origin"
    parsed = PageReferences(html)
    assert parsed.inline_scripts == []
    assert parsed.inline_attributes == []
    assert parsed.urls
    for url in parsed.urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, url
        suffix = Path(parts.path).suffix
        if suffix in CONTENT_TYPES:
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert asset.mimetype in CONTENT_TYPES[suffix], (url, asset.mimetype)
            assert asset.headers["X-Content-Type-Options"] == "nosniff", url
            assert "Content-Security-Policy" in asset.headers, url


def test_no_script_of_the_dashboard_writes_markup_from_strings() -> None:
    """Data reaches the pages as text: no innerHTML, outerHTML, insertAdjacentHTML,
    document.write or eval in the dashboard's own scripts."""
    scripts = sorted((UI / "static").glob("*.js"))
    assert {path.name for path in scripts} >= {"ui.js", "jobs.js", "job.js", "model.js"}
    for script in scripts:
        code = re.sub(r"^\s*//.*$", "", script.read_text(), flags=re.MULTILINE)  # comments
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in code, (script.name, sink)


def test_an_id_in_a_page_url_is_escaped_in_the_page(client: FlaskClient) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    for path in ("/ui/jobs/", "/ui/models/", "/ui/datasets/", "/ui/sweeps/"):
        html = client.get(path + hostile).get_data(as_text=True)
        assert hostile not in html, path
        assert "&lt;img src=x onerror=alert(1)&gt;" in html, path


def test_the_submit_form_offers_the_train_options_as_declared(client: FlaskClient) -> None:
    html = client.get("/ui/").get_data(as_text=True)
    schema = TrainOptions.json_schema()["properties"]
    fields = re.findall(r'data-option="([a-z_]+)" data-kind="([a-z]+)"', html)
    assert fields, html[:500]
    for name, kind in fields:
        declared = schema[name]
        if kind == "choice":
            choices = re.findall(rf'<select id="f-{name}".*?</select>', html, flags=re.DOTALL)[0]
            assert re.findall(r'<option value="([^"]+)">', choices) == declared["enum"]
        elif kind == "boolean":
            assert declared["type"] == "boolean"
        else:
            types = {declared.get("type")} | {s.get("type") for s in declared.get("anyOf", [])}
            assert kind in types, (name, kind, declared)
    # Validation is the API's: the browser's own checks are off, so its messages show.
    assert re.search(r'<form id="submit-form" novalidate>', html)


def test_the_vendored_uplot_matches_its_note_and_ships_in_the_wheel() -> None:
    vendored = UI / "static" / "vendor" / "uplot"
    note = (vendored / "VENDORED.md").read_text()
    hashes = dict(re.findall(r"\| `([^`]+)` \| `([0-9a-f]{64})` \|", note))
    assert set(hashes) == {path.name for path in vendored.iterdir()} - {"VENDORED.md"}
    for name, expected in hashes.items():
        assert hashlib.sha256((vendored / name).read_bytes()).hexdigest() == expected, name
    assert "1.6.32" in note and "MIT" in (vendored / "LICENSE").read_text()

    package = UI.parent.parent
    patterns = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]
    shipped = {path for pattern in patterns["cnnswarm"] for path in package.glob(pattern)}
    files = {
        path for path in UI.rglob("*") if path.is_file() and "__pycache__" not in path.parts
    } - set(UI.glob("*.py"))
    assert files and files <= shipped, sorted(str(path) for path in files - shipped)


def test_a_browser_asking_for_the_root_is_sent_to_the_dashboard(client: FlaskClient) -> None:
    browser_accept = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
    answer = client.get("/", headers={"Accept": browser_accept})
    assert answer.status_code == 302 and answer.location == "/ui/"
    # The seed's clients (no Accept, or */* as curl and requests send) keep the seed's answer.
    for headers in ({}, {"Accept": "*/*"}, {"Accept": "application/json"}):
        seed = client.get("/", headers=headers)
        assert seed.status_code == 200, headers
        assert "running" in seed.get_data(as_text=True), headers


def test_samples_are_each_class_counts_and_first_training_rows(
    client: FlaskClient, tmp_path: Path
) -> None:
    digits = load_builtin("digits", tmp_path / "digits")
    answer = client.get("/api/v1/datasets/digits/samples?per_class=3")
    assert answer.status_code == 200, answer.json
    body = answer.get_json()
    assert body["dataset"] == "digits" and body["shape"] == list(digits.input_shape)
    assert [c["name"] for c in body["classes"]] == digits.classes
    for index, klass in enumerate(body["classes"]):
        assert klass["index"] == index
        assert klass["num_train"] == int((digits.y_train == index).sum())
        assert klass["num_test"] == int((digits.y_test == index).sum())
        assert klass["samples"] == [int(r) for r in np.flatnonzero(digits.y_train == index)[:3]]

    default = client.get("/api/v1/datasets/digits/samples").get_json()
    assert all(len(c["samples"]) == 8 for c in default["classes"])
    too_many = client.get("/api/v1/datasets/digits/samples?per_class=65")
    assert too_many.status_code == 400 and too_many.get_json()["field"] == "per_class"
    unknown = client.get("/api/v1/datasets/ds-000000000000/samples")
    assert unknown.status_code == 404


def test_a_sample_image_is_the_training_row_pixel_for_pixel(
    client: FlaskClient, tmp_path: Path
) -> None:
    digits = load_builtin("digits", tmp_path / "digits")
    row = 17
    answer = client.get(f"/api/v1/datasets/digits/images/{row}.png")
    assert answer.status_code == 200 and answer.mimetype == "image/png"
    with Image.open(io.BytesIO(answer.data)) as image:
        pixels = np.asarray(image)
    assert np.array_equal(pixels, digits.x_train[row][0])
    past_the_end = client.get(f"/api/v1/datasets/digits/images/{len(digits.x_train)}.png")
    assert past_the_end.status_code == 404
    assert past_the_end.get_json()["field"] == "row"
