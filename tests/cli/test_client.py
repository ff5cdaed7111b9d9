"""cnnswarm.client against a real HTTP server (the fake controller in conftest.py)."""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import pytest

from cnnswarm.client import Client, ClientError, JobEvent, parse_sse


def test_sse_parser_follows_the_event_stream_rules() -> None:
    lines = [": comment", "event: progress", "data: {\"a\":", "data:1}", "", "id: 7", "",
             "data: bare", "", "event: end", "data: last"]  # fmt: skip
    assert list(parse_sse(iter(lines))) == [
        ("progress", '{"a":\n1}'),
        ("message", "bare"),
        ("end", "last"),
    ]


def test_datasets_upload_sends_multipart_file_and_name(fake: Any, tmp_path: Path) -> None:
    archive = tmp_path / "pets.zip"
    archive.write_bytes(b"PK" + b"\0" * 100)
    client = Client(fake.url)
    record = client.upload_dataset(archive, name="pets")
    assert record["id"] == "ds-pets" and record["classes"] == ["cat", "dog"]
    assert fake.last("/api/v1/datasets")["upload"] == {
        "filename": "pets.zip",
        "size": 102,
        "name": "pets",
    }
    assert [d["id"] for d in client.list_datasets()] == ["cifar10", "digits"]
    assert client.get_dataset("digits")["shape"] == [1, 8, 8]
    assert client.delete_dataset("ds-pets") == {}


def test_server_errors_carry_status_and_json_body(fake: Any) -> None:
    client = Client(fake.url)
    with pytest.raises(ClientError) as caught:
        client.submit_job("cifar10", train_opts={"bogus": 1})
    error = caught.value
    assert error.status == 400
    assert error.exception == "InvalidInputArg"
    assert error.field == "train_opts.bogus"
    assert error.error == "unknown train option 'bogus'"
    assert "400 InvalidInputArg" in str(error)
    with pytest.raises(ClientError) as missing:
        client.get_job("nope")
    assert (missing.value.status, missing.value.exception) == (404, "NotFound")


def test_unreachable_server_is_a_client_error_with_status_0(fake: Any) -> None:
    url = fake.url
    fake.stop()
    with pytest.raises(ClientError) as caught:
        Client(url, timeout=2).health()
    assert caught.value.status == 0
    assert "cannot reach" in caught.value.message
    assert Client(url, timeout=2).ready() is False


def test_token_goes_in_the_authorization_header(fake_with_token: Any) -> None:
    with pytest.raises(ClientError) as caught:
        Client(fake_with_token.url).list_jobs()
    assert caught.value.status == 401
    assert Client(fake_with_token.url, token="s3cret").list_jobs() == []
    sent = fake_with_token.last("/api/v1/jobs")["headers"]
    assert sent["Authorization"] == "Bearer s3cret"


def test_submit_job_sends_only_given_fields_and_the_idempotency_key(fake: Any) -> None:
    client = Client(fake.url)
    job = client.submit_job(
        "digits",
        model_type="SmallConvNet",
        example_idxs=(0, 100),
        train_opts={"num_epochs": 3, "lr": 0.1},
        idempotency_key="key-1",
    )
    sent = fake.last("/api/v1/jobs")
    assert sent["json"] == {
        "dataset": "digits",
        "model_type": "SmallConvNet",
        "example_idxs": [0, 100],
        "train_opts": {"num_epochs": 3, "lr": 0.1},
    }
    assert sent["headers"]["Idempotency-Key"] == "key-1"
    assert job["state"] == "queued"
    client.submit_job("cifar10")
    assert fake.last("/api/v1/jobs")["json"] == {"dataset": "cifar10"}
    assert "Idempotency-Key" not in fake.last("/api/v1/jobs")["headers"]
    assert [j["id"] for j in client.list_jobs(state="queued")] == ["job-1", "job-2"]
    assert fake.last("/api/v1/jobs")["args"] == {"state": "queued"}
    assert client.cancel_job("job-2")["state"] == "cancelled"
    assert [j["id"] for j in client.list_jobs(state="cancelled")] == ["job-2"]


def test_job_events_arrive_while_the_stream_is_still_open(fake: Any) -> None:
    client = Client(fake.url)
    job = client.submit_job("cifar10")
    fake.state.stream_pauses = True
    events = client.iter_job_events(job["id"], read_timeout=10)
    first = next(events)
    # The server holds the rest of the stream until now: the first event was not buffered.
    assert not fake.state.release_stream.is_set()
    fake.state.release_stream.set()
    rest = list(events)
    assert not fake.state.stream_wait_timed_out
    assert first == JobEvent("progress", {**first.job, "state": "running", "epoch": 1})
    assert [(e.event, e.job["epoch"], e.job["state"]) for e in rest] == [
        ("progress", 2, "running"),
        ("end", 2, "succeeded"),
    ]


def test_wait_for_job_follows_events_and_reports_each_update(fake: Any) -> None:
    client = Client(fake.url)
    job = client.submit_job("cifar10")
    seen: list[float] = []
    final = client.wait_for_job(
        job["id"], timeout=20, on_update=lambda j: seen.append(j["progress"])
    )
    assert final["state"] == "succeeded"
    assert seen == [0.25, 0.75, 1.0]
    assert job["id"] not in fake.state.polls  # no polling needed


def test_wait_for_job_falls_back_to_polling_without_a_stream(fake: Any) -> None:
    client = Client(fake.url)
    job = client.submit_job("cifar10", model_id="nostream")
    final = client.wait_for_job(job["id"], timeout=20, poll_interval_s=0.01)
    assert final["state"] == "succeeded"
    assert fake.state.polls["nostream"] == 3


def test_wait_for_job_times_out(fake: Any) -> None:
    client = Client(fake.url)
    job = client.submit_job("cifar10", model_id="nostream")
    with pytest.raises(TimeoutError):
        client.wait_for_job(job["id"], timeout=0, poll_interval_s=0.01)


def test_predict_images_sends_repeated_files_and_top_k(fake: Any, tmp_path: Path) -> None:
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG fake")
    client = Client(fake.url)
    predictions = client.predict_images("prod", [image, b"raw bytes"], top_k=2)
    sent = fake.last("/api/v1/models/prod/predict")
    assert sent["files"] == ["cat.png", "image-1"]
    assert sent["args"] == {"top_k": "2"}
    assert [p["class_tag"] for p in predictions] == ["plane", "car"]
    assert [len(p["top_k"]) for p in predictions] == [2, 2]
    with pytest.raises(ClientError) as caught:
        client.predict_images("prod", [b"not an image"])
    assert caught.value.field == "files[0]"


def test_predict_instances_and_examples_send_json(fake: Any) -> None:
    client = Client(fake.url)
    client.predict_instances("m-1", [b"png-bytes"])
    sent = fake.last("/api/v1/models/m-1/predict")
    assert sent["json"] == {"instances": [base64.b64encode(b"png-bytes").decode()]}
    assert "top_k" not in sent["args"]

    class ArrayLike:
        def tolist(self) -> list[Any]:
            return [[[[0.5]]]]

    predictions = client.predict_examples("m-1", [ArrayLike(), ((0.1,),)], top_k=1)
    assert fake.last("/api/v1/models/m-1/predict")["json"] == {"examples": [[[[[0.5]]]], [[0.1]]]}
    assert len(predictions) == 2


def test_models_aliases_trainers_status_health(fake: Any) -> None:
    client = Client(fake.url)
    assert client.list_models()[0]["aliases"] == ["prod"]
    assert client.get_model("prod")["id"] == "m-1"
    assert client.delete_model("m-1") == {"deleted": "m-1"}
    assert client.set_alias("prod", "m-1") == {"alias": "prod", "model_id": "m-1"}
    assert fake.last("/api/v1/aliases/prod")["json"] == {"model_id": "m-1"}
    assert client.list_trainers()[0]["state"] == "alive"
    assert client.status()["train_jobs"][0]["trainer_id"] == "t-1"
    assert client.health() == {"status": "ok"}
    assert client.ready() is True


def test_iter_events_can_be_read_concurrently_with_other_calls(fake: Any) -> None:
    """A stream held open does not block other requests of the same client."""
    client = Client(fake.url)
    job = client.submit_job("cifar10")
    fake.state.stream_pauses = True
    events = client.iter_job_events(job["id"], read_timeout=10)
    next(events)
    done = threading.Event()

    def other_call() -> None:
        client.list_models()
        done.set()

    worker = threading.Thread(target=other_call)
    worker.start()
    worker.join(timeout=10)
    assert done.is_set()
    fake.state.release_stream.set()
    assert [e.event for e in events][-1] == "end"
