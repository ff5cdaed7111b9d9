"""The Python client's sweep calls (``cnnswarm.client.Client`` has them): start, list, show,
cancel and wait for hyperparameter sweeps over HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cnnswarm.urls import quote_segment

SWEEP_FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})


class SweepCalls:
    """``/api/v1/sweeps`` for a client that sends JSON requests with ``_json``."""

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        raise NotImplementedError  # the client's own

    def submit_sweep(
        self,
        dataset: str,
        space: Mapping[str, Any],
        *,
        model_type: str | None = None,
        train_opts: Mapping[str, Any] | None = None,
        example_idxs: Sequence[int] | None = None,
        sampler: str | None = None,
        max_trials: int | None = None,
        max_parallel: int | None = None,
        metric: str | None = None,
        direction: str | None = None,
        pruner: str | None = None,
        seed: int | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Start a sweep over ``space`` (train_opts key -> ``{"float": [lo, hi], "log": true}``,
        ``{"int": [lo, hi]}`` or ``{"choice": [...]}``); return it. Only given fields are sent."""
        optional = {
            "model_type": model_type,
            "train_opts": None if train_opts is None else dict(train_opts),
            "example_idxs": None if example_idxs is None else list(example_idxs),
            "sampler": sampler,
            "max_trials": max_trials,
            "max_parallel": max_parallel,
            "metric": metric,
            "direction": direction,
            "pruner": pruner,
            "seed": seed,
        }
        body: dict[str, Any] = {"dataset": dataset, "space": dict(space)}
        body.update({key: value for key, value in optional.items() if value is not None})
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        result: dict[str, Any] = self._json("POST", "/api/v1/sweeps", json=body, headers=headers)
        return result

    def list_sweeps(self) -> list[dict[str, Any]]:
        """Every sweep's summary (counts and best trial, without the trials)."""
        body = self._json("GET", "/api/v1/sweeps")
        return list(body["sweeps"]) if isinstance(body, dict) else []

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        """One sweep with its trials."""
        result: dict[str, Any] = self._json("GET", f"/api/v1/sweeps/{quote_segment(sweep_id)}")
        return result

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        """Cancel a sweep and its live trials; return it."""
        path = f"/api/v1/sweeps/{quote_segment(sweep_id)}/cancel"
        result: dict[str, Any] = self._json("POST", path)
        return result

    def wait_for_sweep(
        self,
        sweep_id: str,
        timeout: float | None = None,
        on_update: Callable[[dict[str, Any]], None] | None = None,
        poll_interval_s: float = 1.0,
    ) -> dict[str, Any]:
        """Poll until the sweep ends and return it; ``on_update(sweep)`` sees every poll.
        Raises ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            sweep = self.get_sweep(sweep_id)
            if on_update is not None:
                on_update(sweep)
            if sweep.get("state") in SWEEP_FINAL_STATES:
                return sweep
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"sweep {sweep_id} still {sweep.get('state')} after {timeout} s")
            time.sleep(poll_interval_s)
