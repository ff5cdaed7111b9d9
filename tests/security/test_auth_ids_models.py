"""API token on every mutating and internal route; no token in logs; hostile model files never
run; hostile ids never reach the filesystem.

Decision: with a token configured, every non-GET route and every internal route needs it, except
the read-only POST routes (inference and the seed's data lookups: ``/predict``,
``/api/v1/models/<id>/predict``, ``/get_examples``, ``/get_dataset_info``). They change nothing;
their cost is bounded by load shedding (503 + Retry-After past ``PREDICT_MAX_QUEUE_S`` of queue
time) and the per-request item limits.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient

from cnnswarm.config import Settings, load_settings
from cnnswarm.controller.app import create_app
from cnnswarm.trainer.child import ChildConfig
from support import MarkerPayload

TOKEN = "tok-5f1e0c9b7a"
READ_ONLY_POSTS = {
    "/predict",
    "/api/v1/models/<model_id>/predict",
    "/get_examples",
    "/get_dataset_info",
}


@pytest.fixture
def guarded(tmp_path: Path) -> Any:
    application = create_app(Settings(home_dir=tmp_path / "home", api_token=TOKEN))
    yield application
    application.extensions["cnnswarm"].stores.close()


def concrete(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", "x1", rule)


def test_every_mutating_and_internal_route_needs_the_token(guarded: Flask) -> None:
    client = guarded.test_client()
    checked = 0
    for rule in guarded.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            must_guard = rule.rule.startswith("/internal/") or (
                method != "GET" and rule.rule not in READ_ONLY_POSTS
            )
            if not must_guard:
                continue
            url = concrete(rule.rule)
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
                response = client.open(url, method=method, json={}, headers=headers)
                assert response.status_code == 401, (method, rule.rule, headers)
            ok = client.open(
                url, method=method, json={}, headers={"Authorization": f"Bearer {TOKEN}"}
            )
            assert ok.status_code != 401, (method, rule.rule)
            checked += 1
    assert checked >= 12  # jobs, cancel, aliases, datasets, models, /train and internal routes


def test_the_token_never_reaches_the_logs(guarded: Flask, caplog: pytest.LogCaptureFixture) -> None:
    client = guarded.test_client()
    caplog.set_level(logging.DEBUG)
    client.post(
        "/api/v1/jobs", json={"dataset": "digits"}, headers={"Authorization": "Bearer guess-123"}
    )
    client.post(
        "/api/v1/jobs", json={"dataset": "nope"}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    client.post("/internal/v1/heartbeat", data="{bad", headers={"Authorization": f"Bearer {TOKEN}"})
    assert TOKEN not in caplog.text and "guess-123" not in caplog.text


def test_settings_and_the_job_config_never_show_the_token(tmp_path: Path) -> None:
    settings = load_settings({"CNN_SWARM_API_TOKEN": TOKEN, "HOME_DIR": str(tmp_path)})
    child_config = ChildConfig("http://127.0.0.1:1", TOKEN, tmp_path, 1, True)
    assert settings.api_token == TOKEN and child_config.api_token == TOKEN
    for shown in (repr(settings), str(settings), repr(child_config), f"{child_config}"):
        assert "127.0.0.1" in shown or str(tmp_path) in shown  # the rest is still shown
        assert TOKEN not in shown


def hostile_files(marker: Path) -> list[bytes]:
    buffer = io.BytesIO()
    torch.save({"format": "x", "state_dict": MarkerPayload(marker)}, buffer)
    return [buffer.getvalue(), pickle.dumps({"state_dict": MarkerPayload(marker)})]


def test_a_hostile_result_upload_is_refused_and_never_runs(
    client: FlaskClient, app: Flask, running_job: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    for body in hostile_files(marker):
        job_id = running_job(client, app, f"evil{len(body)}", {})
        response = client.post(f"/internal/v1/jobs/{job_id}/result?attempt=1", data=body)
        assert response.status_code == 400, response.json
        assert not marker.exists()
        assert client.get(f"/api/v1/jobs/{job_id}").json["state"] == "running"
    assert client.get("/api/v1/models").json["models"] == []


def test_a_planted_model_file_is_refused_and_never_runs(
    client: FlaskClient, app: Flask, published: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    context = app.extensions["cnnswarm"]
    row = context.stores.catalog.get_model(published)
    (context.stores.artifacts.root / row["filename"]).write_bytes(hostile_files(marker)[0])
    context.predictor.forget(published)
    response = client.post(
        f"/api/v1/models/{published}/predict", json={"examples": [[[[0.0] * 8] * 8]]}
    )
    # A file that is not a weights-only torch file is refused as such, not a crash (500).
    assert response.status_code == 400, response.json
    assert (response.json or {}).get("exception") == "InvalidInputArg"
    assert not marker.exists()
    assert client.get("/healthz").status_code == 200


BAD_IDS = [
    "..%2F..%2Foutside",
    "a%2F..%2F..%2Foutside",
    "..",
    ".hidden",
    "x" * 300,
    "caf%C3%A9",
    "%00",
    "a b",
]


def _expected_status(rule: str, bad_id: str) -> int:
    """404 where no route matches (an encoded slash splits the id into more path segments; the
    static routes, the API docs' assets among them, have no such files; an ``int`` slot matches
    no id); 200 for a dashboard page, which only shows the id as text (tests/ui/test_pages.py)
    and reads nothing by it (its script asks the API, which refuses it); else 400: the route
    refuses the id by name."""
    if (
        rule.startswith(("/static/", "/ui/static/", "/api/v1/docs/assets/"))
        or "%2F" in bad_id
        or "<int:" in rule
    ):
        return 404
    if rule.startswith("/ui/"):
        return 200
    return 400


def test_hostile_ids_are_4xx_and_touch_nothing_outside_home(
    client: FlaskClient, app: Flask, published: str, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.npz").write_bytes(b"keep")
    (outside / "canary.pth").write_bytes(b"keep")
    before = sorted(p.name for p in tmp_path.iterdir())
    rules = [r for r in app.url_map.iter_rules() if r.arguments]
    assert len(rules) >= 9
    for rule in rules:
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            for bad in BAD_IDS:
                url = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", bad, rule.rule)
                response = client.open(url + "?attempt=1", method=method, json={"model_id": bad})
                expected = _expected_status(rule.rule, bad)
                assert response.status_code == expected, (method, url, response.status_code)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (outside / "canary.npz").read_bytes() == b"keep"
    assert (outside / "canary.pth").read_bytes() == b"keep"
    assert client.get(f"/api/v1/models/{published}").status_code == 200
