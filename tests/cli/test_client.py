"""cnnswarm.client against the real controller app over HTTP (``LiveController`` in conftest.py),
with the trainer's side of a job played through the controller's internal routes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from cnnswarm.client import Client, ClientError, JobEvent, parse_sse


def test_sse_parser_follows_the_event_stream_rules() -> None:
    lines = [": comment", "event: progress", "data: {\"a\":", "data:1}", "", "id: 7", "",
             "data: bare", "", "event: end", "data: last"]  # fmt: skip
    assert list(parse_sse(iter(lines))) == [
        ("progress", '{"a":\n1}'),
        ("message", "bare"),
        ("end", "last"),
    ]


def test_datasets_upload_sends_multipart_file_and_name(controller: Any, pets_zip: Path) -> None:
    client = Client(controller.url)
    record = client.upload_dataset(pets_zip, name="pets")
    assert record["name"] == "pets" and record["classes"] == ["cat", "dog"]
    assert record["num_train"] + record["num_test"] == 12 and record["shape"] == [1, 8, 8]
    assert [d["id"] for d in client.list_datasets()] == [
        "cifar10", "digits", "synthetic", record["id"],
    ]  # fmt: skip
    assert client.get_dataset("digits")["shape"] == [1, 8, 8]
    assert client.delete_dataset(record["id"])["id"] == record["id"]
    with pytest.raises(ClientError) as gone:
        client.get_dataset(record["id"])
    assert gone.value.status == 404


def test_server_errors_carry_status_and_json_body(controller: Any) -> None:
    client = Client(controller.url)
    with pytest.raises(ClientError) as caught:
        client.submit_job("digits", train_opts={"bogus": 1})
    error = caught.value
    assert error.status == 400
    assert error.exception == "InvalidInputArg"
    assert error.field == "bogus"
    assert error.error is not None and error.error.startswith("unknown train_opts key(s): bogus")
    assert str(error).startswith("400 InvalidInputArg: unknown train_opts key(s): bogus")
    with pytest.raises(ClientError) as missing:
        client.get_job("job-missing")
    assert (missing.value.status, missing.value.exception) == (404, "NotFound")


def test_unreachable_server_is_a_client_error_with_status_0(controller: Any) -> None:
    url = controller.url
    controller.stop()
    with pytest.raises(ClientError) as caught:
        Client(url, timeout=2).health()
    assert caught.value.status == 0
    assert "cannot reach" in caught.value.message
    assert Client(url, timeout=2).ready() is False


def test_token_goes_in_the_authorization_header(guarded_controller: Any) -> None:
    with pytest.raises(ClientError) as caught:
        Client(guarded_controller.url).submit_job("digits")
    assert caught.value.status == 401
    with pytest.raises(ClientError) as wrong:
        Client(guarded_controller.url, token="guess").submit_job("digits")
    assert wrong.value.status == 401
    job = Client(guarded_controller.url, token="s3cret").submit_job("digits")
    assert job["state"] == "queued"


def test_submit_job_sends_the_given_fields_and_the_idempotency_key(controller: Any) -> None:
    client = Client(controller.url)
    job = client.submit_job(
        "digits",
        model_type="SmallConvNet",
        model_id="m-7",
        example_idxs=(0, 100),
        train_opts={"num_epochs": 3, "lr": 0.1},
        idempotency_key="key-1",
    )
    assert (job["dataset"], job["model_type"], job["model_id"]) == ("digits", "SmallConvNet", "m-7")
    assert job["example_idxs"] == [0, 100] and job["state"] == "queued"
    assert (job["train_opts"]["num_epochs"], job["train_opts"]["lr"]) == (3, 0.1)
    # The key came along: the same submission again is the same job.
    again = client.submit_job("digits", model_type="SmallConvNet", model_id="m-7",
                              example_idxs=(0, 100), train_opts={"num_epochs": 3, "lr": 0.1},
                              idempotency_key="key-1")  # fmt: skip
    assert again["id"] == job["id"]
    # Without a key, two submissions are two jobs, with the server's defaults.
    first, second = client.submit_job("digits"), client.submit_job("digits")
    assert first["id"] != second["id"]
    assert first["example_idxs"] is None and first["model_type"] == "SmallConvNet"
    assert {j["id"] for j in client.list_jobs(state="queued")} == {
        job["id"], first["id"], second["id"],
    }  # fmt: skip
    assert client.cancel_job(second["id"])["state"] == "cancelled"
    assert [j["id"] for j in client.list_jobs(state="cancelled")] == [second["id"]]


def test_job_events_arrive_while_the_stream_is_still_open(
    controller: Any, trainer: Any, digits_model: Any
) -> None:
    """Each step of the job happens only after the client got the previous event: an event
    held back in a buffer would stall the test."""
    client = Client(controller.url)
    job_id = client.submit_job("digits", model_id="m-ev")["id"]
    events = client.iter_job_events(job_id, read_timeout=10)
    first = next(events)
    assert (first.event, first.job["state"]) == ("progress", "queued")
    trainer.take(job_id)
    running = next(events)
    assert (running.event, running.job["state"], running.job["trainer"]) == (
        "progress", "running", "t-1",
    )  # fmt: skip
    trainer.report(job_id, 0.5, 1, digits_model.metrics[:1])
    reported = next(events)
    assert (reported.job["progress"], reported.job["metrics"]) == (0.5, digits_model.metrics[:1])
    trainer.publish(job_id, digits_model.file)
    rest = list(events)
    assert rest == [JobEvent("end", rest[-1].job)]
    assert rest[-1].job["state"] == "succeeded" and rest[-1].job["metrics"] == digits_model.metrics


def test_wait_for_job_follows_events_and_reports_each_update(
    controller: Any, trainer: Any, digits_model: Any
) -> None:
    client = Client(controller.url)
    job_id = client.submit_job("digits", model_id="m-wait")["id"]
    seen: list[tuple[str, float]] = []

    def on_update(job: dict[str, Any]) -> None:
        """Advance the job one step each time the client has seen it."""
        seen.append((job["state"], job["progress"]))
        if job["state"] == "queued":
            trainer.take(job_id)
        elif job["state"] == "running" and not job["metrics"]:
            trainer.report(job_id, 0.5, 1, digits_model.metrics[:1])
        elif job["state"] == "running":
            trainer.publish(job_id, digits_model.file)

    final = client.wait_for_job(job_id, timeout=30, on_update=on_update)
    assert final["state"] == "succeeded"
    assert seen == [("queued", 0.0), ("running", 0.0), ("running", 0.5), ("succeeded", 1.0)]
    assert ("GET", f"/api/v1/jobs/{job_id}") not in controller.requests  # no polling needed


def test_wait_for_job_falls_back_to_polling_without_a_stream(
    streamless_controller: Any, trainer_for: Any, digits_model: Any
) -> None:
    controller = streamless_controller
    trainer = trainer_for(controller)
    client = Client(controller.url)
    job_id = client.submit_job("digits", model_id="m-poll")["id"]

    def on_update(job: dict[str, Any]) -> None:
        if job["state"] == "queued":
            trainer.take(job_id)
        elif job["state"] == "running":
            trainer.publish(job_id, digits_model.file)

    final = client.wait_for_job(job_id, timeout=30, on_update=on_update, poll_interval_s=0.01)
    assert final["state"] == "succeeded"
    assert ("GET", f"/api/v1/jobs/{job_id}/events") in controller.requests
    assert controller.requests.count(("GET", f"/api/v1/jobs/{job_id}")) == 3


def test_wait_for_job_times_out(controller: Any) -> None:
    client = Client(controller.url)
    job = client.submit_job("digits")
    with pytest.raises(TimeoutError):
        client.wait_for_job(job["id"], timeout=0, poll_interval_s=0.01)


def test_predict_images_sends_repeated_files_and_top_k(
    controller: Any, published: str, digit_files: list[tuple[Path, int]]
) -> None:
    client = Client(controller.url)
    (path, label), (other_path, other_label) = digit_files[:2]
    predictions = client.predict_images("prod", [path, other_path.read_bytes()], top_k=3)
    assert [len(p["top_k"]) for p in predictions] == [3, 3]
    assert [p["class_idx"] for p in predictions] == [label, other_label]
    for prediction in predictions:
        ranked = prediction["top_k"]
        assert ranked[0] == {k: prediction[k] for k in ("class_idx", "class_tag", "probability")}
        assert [r["class_tag"] for r in ranked] == [str(r["class_idx"]) for r in ranked]
        assert [r["probability"] for r in ranked] == sorted(
            (r["probability"] for r in ranked), reverse=True
        )
    with pytest.raises(ClientError) as caught:
        client.predict_images("prod", [path, b"not an image"])
    assert (caught.value.status, caught.value.exception) == (400, "InvalidInputArg")
    assert caught.value.message.startswith("400 InvalidInputArg: image-1: not a readable image")


def test_predict_instances_and_examples_agree_with_files(
    controller: Any, published: str, digit_files: list[tuple[Path, int]]
) -> None:
    client = Client(controller.url)
    images = [path.read_bytes() for path, _ in digit_files]
    by_file = client.predict_images("m-1", images)
    assert len(by_file) == len(images)
    by_instance = client.predict_instances("m-1", images)
    assert [p["class_idx"] for p in by_instance] == [p["class_idx"] for p in by_file]
    with pytest.raises(ClientError) as caught:  # sent as base64, decoded, then refused
        client.predict_instances("m-1", [b"png-bytes"])
    assert caught.value.message.startswith("400 InvalidInputArg: instances[0]:")

    # The same images as normalized arrays: anything with ``tolist()`` or nested sequences.
    prep = client.get_model("m-1")["preprocessing"]
    mean, std = prep["mean"][0], prep["std"][0]
    arrays = [(np.asarray(Image.open(path)) / 255.0 - mean) / std for path, _ in digit_files]

    class ArrayLike:
        def __init__(self, image: np.ndarray) -> None:
            self.image = image

        def tolist(self) -> list[Any]:
            return [self.image.tolist()]

    examples = [ArrayLike(arrays[0]), [arrays[1].tolist()]]
    predictions = client.predict_examples("m-1", examples, top_k=1)
    assert [p["class_idx"] for p in predictions] == [p["class_idx"] for p in by_file[:2]]


def test_models_aliases_trainers_status_health(
    controller: Any, trainer: Any, published: str, digits_model: Any
) -> None:
    client = Client(controller.url)
    (model,) = client.list_models()
    assert (model["id"], model["aliases"], model["metrics"]) == (
        "m-1",
        ["prod"],
        digits_model.metrics,
    )
    assert client.get_model("prod")["id"] == "m-1"
    assert client.set_alias("latest", "m-1") == {"alias": "latest", "model_id": "m-1"}
    assert client.get_model("latest")["id"] == "m-1"
    (registered,) = client.list_trainers()
    assert (registered["id"], registered["state"], registered["free_slots"]) == ("t-1", "idle", 1)
    assert client.status()["train_jobs"][0]["trainer_id"] == "t-1"
    assert client.health()["status"] == "alive"
    assert client.ready() is True
    assert client.delete_model("m-1")["id"] == "m-1"
    assert client.list_models() == []


def test_iter_events_can_be_read_concurrently_with_other_calls(controller: Any) -> None:
    """A stream held open does not block other requests of the same client."""
    client = Client(controller.url)
    job = client.submit_job("digits")
    events = client.iter_job_events(job["id"], read_timeout=10)
    assert next(events).job["state"] == "queued"
    done = threading.Event()

    def other_call() -> None:
        client.list_models()
        done.set()

    worker = threading.Thread(target=other_call)
    worker.start()
    worker.join(timeout=10)
    assert done.is_set()
    client.cancel_job(job["id"])
    assert [(e.event, e.job["state"]) for e in events] == [("end", "cancelled")]


# A "/" is sent as %2F too (tests/test_urls.py), but WSGI servers decode it before routing.
@pytest.mark.parametrize("hostile", ["..", ".", "../jobs", "m-1?top_k=1", "m-1#x", "m-1%2F", "a b"])
def test_ids_and_aliases_reach_the_server_as_one_path_segment(
    controller: Any, published: str, digit_files: list[tuple[Path, int]], hostile: str
) -> None:
    """Unquoted, ``../jobs`` would read the job list as a model and ``m-1?top_k=1`` would serve
    model m-1: each id must arrive whole, and be refused, on the route it was meant for."""
    client = Client(controller.url)
    calls = [
        ("GET", f"/api/v1/models/{hostile}", lambda: client.get_model(hostile)),
        ("DELETE", f"/api/v1/models/{hostile}", lambda: client.delete_model(hostile)),
        ("PUT", f"/api/v1/aliases/{hostile}", lambda: client.set_alias(hostile, published)),
        (
            "POST",
            f"/api/v1/models/{hostile}/predict",
            lambda: client.predict_images(hostile, [digit_files[0][0]]),
        ),
        ("GET", f"/api/v1/jobs/{hostile}", lambda: client.get_job(hostile)),
        ("GET", f"/api/v1/datasets/{hostile}", lambda: client.get_dataset(hostile)),
    ]
    for method, path, call in calls:
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.status in (400, 404), (method, path, refused.value)
        assert controller.requests[-1] == (method, path)
    assert client.get_model(published)["id"] == published
    assert sorted(client.get_model("prod")["aliases"]) == ["prod"]
