"""Python client of the controller's API v1 (the `cnn-swarm` CLI is built on it).

Every method maps to one route. A non-2xx answer raises ``ClientError`` carrying the HTTP status
and the server's JSON body (``exception``, ``error``, ``field``); an unreachable server raises
``ClientError`` with ``status == 0``. No method retries a write: ``submit_job`` takes an
``idempotency_key`` so a caller can retry it safely itself. Ids and aliases go into a URL as
one quoted path segment each, whatever characters they hold.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from cnnswarm.client_error import ClientError as ClientError  # raised by every call here
from cnnswarm.client_sweeps import SweepCalls
from cnnswarm.urls import quote_segment

DEFAULT_URL = "http://127.0.0.1:48515"
TERMINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})

ImageInput = str | Path | bytes


@dataclass(frozen=True)
class JobEvent:
    """One server-sent event of a job: ``event`` is ``progress`` or ``end``; ``job`` its JSON."""

    event: str
    job: dict[str, Any]


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """Yield ``(event, data)`` per dispatched server-sent event (the WHATWG rules: ``:`` comments
    are skipped, several ``data:`` lines join with newlines, a blank line dispatches, the event
    name defaults to ``message``)."""
    event = ""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield (event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield (event or "message", "\n".join(data))


def _split_lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """Decode a byte stream into lines as soon as each line is complete (``\\r\\n`` or ``\\n``)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            yield raw.removesuffix(b"\r").decode("utf-8", errors="replace")
    if pending:
        yield pending.removesuffix(b"\r").decode("utf-8", errors="replace")


def _unwrap_list(body: Any, key: str) -> list[dict[str, Any]]:
    """Lists come back either bare or as ``{key: [...]}``; return the list either way."""
    if isinstance(body, dict) and isinstance(body.get(key), list):
        return list(body[key])
    if isinstance(body, list):
        return body
    raise ClientError(200, None, f"unexpected answer: expected a list of {key}, got {body!r:.200}")


class Client(SweepCalls):
    """A connection to one controller: ``Client("http://host:48515", token="...")``; its sweep
    calls are ``SweepCalls``'."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 30.0):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Send a request; raise ``ClientError`` for a non-2xx answer or an unreachable server."""
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self.session.request(method, self.url + path, **kwargs)
        except requests.RequestException as exc:
            raise ClientError(0, None, f"cannot reach {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise _error_from(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and return its decoded JSON body (``{}`` for an empty body)."""
        response = self._send(method, path, **kwargs)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                response.status_code,
                None,
                f"{method} {path}: the server answered non-JSON: {response.text[:200]!r}",
            ) from None

    # -- datasets ---------------------------------------------------------------------------

    def upload_dataset(self, path: str | Path, name: str | None = None) -> dict[str, Any]:
        """Upload a zip, tar or npz dataset; return its record (``id``, ``classes``, ...)."""
        path = Path(path)
        data = {"name": name} if name else {}
        with path.open("rb") as stream:
            files = {"file": (path.name, stream, "application/octet-stream")}
            # Uploads can be large: no read timeout while the server imports the file.
            result: dict[str, Any] = self._json(
                "POST", "/api/v1/datasets", files=files, data=data, timeout=(self.timeout, None)
            )
        return result

    def list_datasets(self) -> list[dict[str, Any]]:
        """Every dataset, built-ins (``cifar10``, ``digits``, ``synthetic``) included."""
        return _unwrap_list(self._json("GET", "/api/v1/datasets"), "datasets")

    def get_dataset(self, dataset_id: str) -> dict[str, Any]:
        """One dataset's record."""
        result: dict[str, Any] = self._json("GET", f"/api/v1/datasets/{quote_segment(dataset_id)}")
        return result

    def delete_dataset(self, dataset_id: str) -> dict[str, Any]:
        """Delete an uploaded dataset; return the server's answer (``{}`` when empty)."""
        result: dict[str, Any] = self._json(
            "DELETE", f"/api/v1/datasets/{quote_segment(dataset_id)}"
        )
        return result

    # -- jobs -------------------------------------------------------------------------------

    def submit_job(
        self,
        dataset: str,
        model_type: str | None = None,
        model_id: str | None = None,
        example_idxs: Sequence[int] | None = None,
        train_opts: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
        workers: int | None = None,
        min_workers: int | None = None,
    ) -> dict[str, Any]:
        """Queue a training job (on ``workers`` trainers at once: data-parallel); return the
        job. Only the given fields are sent."""
        body: dict[str, Any] = {"dataset": dataset}
        if model_type is not None:
            body["model_type"] = model_type
        if model_id is not None:
            body["model_id"] = model_id
        if example_idxs is not None:
            body["example_idxs"] = list(example_idxs)
        if train_opts is not None:
            body["train_opts"] = dict(train_opts)
        if workers is not None:
            body["workers"] = workers
        if min_workers is not None:
            body["min_workers"] = min_workers
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self._json("POST", "/api/v1/jobs", json=body, headers=headers)
        return result

    def list_jobs(self, state: str | None = None) -> list[dict[str, Any]]:
        """Jobs, optionally only those in ``state``."""
        params = {"state": state} if state else None
        return _unwrap_list(self._json("GET", "/api/v1/jobs", params=params), "jobs")

    def get_job(self, job_id: str) -> dict[str, Any]:
        """One job (``state``, ``progress``, ``epoch``, ``metrics``, ...)."""
        result: dict[str, Any] = self._json("GET", f"/api/v1/jobs/{quote_segment(job_id)}")
        return result

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Ask for a job to be cancelled; return the job as the server has it now."""
        result: dict[str, Any] = self._json("POST", f"/api/v1/jobs/{quote_segment(job_id)}/cancel")
        return result

    def iter_job_events(self, job_id: str, read_timeout: float = 60.0) -> Iterator[JobEvent]:
        """Follow ``/jobs/<id>/events``, yielding each event as it arrives, until the stream
        ends (after the ``end`` event). Raises ``ClientError`` if the stream cannot be opened
        or breaks; events whose data is not a JSON object are skipped."""
        path = f"/api/v1/jobs/{quote_segment(job_id)}/events"
        response = self._send(
            "GET",
            path,
            stream=True,
            headers={"Accept": "text/event-stream"},
            timeout=(self.timeout, read_timeout),
        )
        try:
            lines = _split_lines(response.iter_content(chunk_size=None))
            for event, data in parse_sse(lines):
                try:
                    job = json.loads(data)
                except ValueError:
                    continue
                if isinstance(job, dict):
                    yield JobEvent(event, job)
                if event == "end":
                    return
        except requests.RequestException as exc:
            raise ClientError(0, None, f"event stream of job {job_id} broke: {exc}") from exc
        finally:
            response.close()

    def wait_for_job(
        self,
        job_id: str,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        poll_interval_s: float = 1.0,
    ) -> dict[str, Any]:
        """Block until the job reaches a terminal state and return it; ``on_update(job)`` sees
        every update. Follows the event stream, falling back to polling ``GET /jobs/<id>`` if
        the stream is unavailable or breaks. Raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def remaining() -> float:
            return float("inf") if deadline is None else deadline - time.monotonic()

        try:
            read_timeout = max(1.0, min(60.0, remaining()))
            for event in self.iter_job_events(job_id, read_timeout=read_timeout):
                if on_update is not None:
                    on_update(event.job)
                if event.job.get("state") in TERMINAL_STATES:
                    return event.job
                if remaining() <= 0:
                    break
        except ClientError:
            pass  # No stream (or it broke): polling below reports any real error itself.
        while True:
            job = self.get_job(job_id)
            if on_update is not None:
                on_update(job)
            if job.get("state") in TERMINAL_STATES:
                return job
            if remaining() <= 0:
                raise TimeoutError(f"job {job_id} still {job.get('state')} after {timeout} s")
            time.sleep(max(0.0, min(poll_interval_s, remaining())))

    # -- models -----------------------------------------------------------------------------

    def list_models(self) -> list[dict[str, Any]]:
        """Every trained model's record."""
        return _unwrap_list(self._json("GET", "/api/v1/models"), "models")

    def get_model(self, model_id: str) -> dict[str, Any]:
        """One model's record (by id or alias)."""
        result: dict[str, Any] = self._json("GET", f"/api/v1/models/{quote_segment(model_id)}")
        return result

    def delete_model(self, model_id: str) -> dict[str, Any]:
        """Delete a model; return the server's answer (``{}`` when empty)."""
        result: dict[str, Any] = self._json("DELETE", f"/api/v1/models/{quote_segment(model_id)}")
        return result

    def import_model(
        self,
        path: str | Path,
        model_id: str,
        classes: Sequence[str] | None = None,
        dataset: str | None = None,
        example_idxs: Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Import a model file (a seed ``.pth`` or a cnn-swarm model file) as ``model_id``;
        return its record, with ``recalibration`` (dataset, rows, images) when the server
        recalibrated its batch norms. ``classes`` names a seed file's outputs; ``dataset`` and
        ``example_idxs`` the data it was trained on."""
        path = Path(path)
        data: dict[str, str] = {"id": model_id}
        if classes is not None:
            data["classes"] = json.dumps(list(classes))
        if dataset is not None:
            data["dataset"] = dataset
        if example_idxs is not None:
            data["example_idxs"] = json.dumps(list(example_idxs))
        with path.open("rb") as stream:
            files = {"file": (path.name, stream, "application/octet-stream")}
            # Recalibration runs over up to 4,096 training images: no read timeout.
            result: dict[str, Any] = self._json(
                "POST", "/api/v1/models", files=files, data=data, timeout=(self.timeout, None)
            )
        return result

    def download_model(self, model_id: str, path: str | Path, torchscript: bool = False) -> Path:
        """Save the model's cnn-swarm model file (or, with ``torchscript``, a frozen TorchScript
        export) at ``path``, replacing it only once the download is complete."""
        path = Path(path)
        route = "torchscript" if torchscript else "file"
        response = self._send(
            "GET", f"/api/v1/models/{quote_segment(model_id)}/{route}", stream=True
        )
        partial = path.with_name(f".{path.name}.part")
        try:
            with partial.open("wb") as out:
                for chunk in response.iter_content(chunk_size=1 << 20):
                    out.write(chunk)
            partial.replace(path)
        except requests.RequestException as exc:
            raise ClientError(0, None, f"download of model {model_id} broke: {exc}") from exc
        finally:
            response.close()
            partial.unlink(missing_ok=True)
        return path

    def set_alias(self, alias: str, model_id: str) -> dict[str, Any]:
        """Point ``alias`` at ``model_id`` (creating or moving it)."""
        result: dict[str, Any] = self._json(
            "PUT", f"/api/v1/aliases/{quote_segment(alias)}", json={"model_id": model_id}
        )
        return result

    # -- predict ----------------------------------------------------------------------------

    def predict_images(
        self, model: str, images: Sequence[ImageInput], top_k: int | None = None
    ) -> list[dict[str, Any]]:
        """Classify image files (paths) or encoded image bytes, sent as multipart ``files``;
        return one prediction per image, in order."""
        files = []
        for index, image in enumerate(images):
            if isinstance(image, bytes):
                files.append(("files", (f"image-{index}", image, "application/octet-stream")))
            else:
                path = Path(image)
                files.append(("files", (path.name, path.read_bytes(), "application/octet-stream")))
        return self._predict(model, top_k, files=files)

    def predict_instances(
        self, model: str, images: Sequence[bytes], top_k: int | None = None
    ) -> list[dict[str, Any]]:
        """Classify encoded PNG/JPEG bytes sent as base64 JSON ``instances``."""
        instances = [base64.b64encode(image).decode("ascii") for image in images]
        return self._predict(model, top_k, json={"instances": instances})

    def predict_examples(
        self, model: str, examples: Sequence[Any], top_k: int | None = None
    ) -> list[dict[str, Any]]:
        """Classify already-normalized N x C x H x W nested lists (the seed's ``examples``)."""
        return self._predict(model, top_k, json={"examples": _to_lists(examples)})

    def _predict(self, model: str, top_k: int | None, **kwargs: Any) -> list[dict[str, Any]]:
        params = {"top_k": top_k} if top_k is not None else None
        body = self._json(
            "POST", f"/api/v1/models/{quote_segment(model)}/predict", params=params, **kwargs
        )
        return _unwrap_list(body, "predictions")

    # -- cluster ----------------------------------------------------------------------------

    def list_trainers(self) -> list[dict[str, Any]]:
        """Registered trainers: address, state, slots, running jobs, last heartbeat."""
        return _unwrap_list(self._json("GET", "/api/v1/trainers"), "trainers")

    def status(self) -> dict[str, Any]:
        """The controller's ``/status`` (the seed's ``train_jobs`` plus more)."""
        result: dict[str, Any] = self._json("GET", "/status")
        return result

    def health(self) -> dict[str, Any]:
        """``/healthz``: raises ``ClientError`` unless the controller is alive."""
        result: dict[str, Any] = self._json("GET", "/healthz")
        return result

    def ready(self) -> bool:
        """Whether ``/readyz`` answers 2xx (False for 503 or an unreachable server)."""
        try:
            self._send("GET", "/readyz")
        except ClientError:
            return False
        return True


def _to_lists(examples: Any) -> Any:
    """Nested sequences (or anything with ``tolist()``, e.g. numpy arrays) as plain lists."""
    tolist = getattr(examples, "tolist", None)
    if callable(tolist):
        return tolist()
    if isinstance(examples, list | tuple):
        return [_to_lists(item) for item in examples]
    return examples


def _error_from(response: requests.Response) -> ClientError:
    """A ``ClientError`` from an error answer, keeping the server's JSON body when it has one."""
    body: dict[str, Any] = {}
    try:
        decoded = response.json()
        if isinstance(decoded, dict):
            body = decoded
    except ValueError:
        pass
    message = body.get("error") or body.get("message") or response.text.strip()[:300]
    if not message:
        message = response.reason or "error"
    code = body.get("exception")
    prefix = f"{response.status_code} {code}" if code else f"{response.status_code}"
    return ClientError(response.status_code, body, f"{prefix}: {message}")
