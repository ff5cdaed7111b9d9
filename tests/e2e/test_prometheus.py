"""A real Prometheus server (Debian's ``prometheus``) scrapes a real controller and trainer; after
a known sequence (two jobs trained, N predictions, one bad predict) PromQL through its HTTP API
returns the job, predict and trainer series with the expected values.

Prometheus is started on a free port with a generated config (1 s scrapes) and killed at the
end; without the binary the test skips (under ``CI=true`` it fails: ``make prometheus`` installs
it)."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pytest
import requests

from cluster import Cluster
from support import dashboard_queries, free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

JOB_OPTS = {"num_epochs": 2, "batch_size": 32, "seed": 0}
EPOCHS_PER_JOB = 2
PREDICTIONS = 5
EXAMPLE = np.zeros((1, 1, 8, 8), dtype=np.float32).tolist()  # one digits image


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        message = "Debian's prometheus is not installed (make prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def scrape_config(targets: dict[str, str]) -> str:
    """Prometheus's config: every ``job: host:port`` target scraped each second."""
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        for job, target in targets.items()
    )
    return (
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"scrape_configs:\n{jobs}"
    )


@contextmanager
def prometheus_server(root: Path, targets: dict[str, str]) -> Iterator[str]:
    """A Prometheus server scraping ``targets``; yields its URL; killed when the block ends."""
    binary = prometheus_binary()
    root.mkdir(parents=True)
    config = root / "prometheus.yml"
    config.write_text(scrape_config(targets))
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.poll() is None, (root / "prometheus.log").read_text()[-3000:]
            try:
                return requests.get(f"{url}/-/ready", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_until(ready, 60, what="Prometheus to be ready")
        yield url
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the group is its pid
        process.wait(10)
        log.close()


def query(prometheus: str, promql: str) -> float | None:
    """The value of an instant PromQL query with one result (None: no result yet)."""
    answer = requests.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5)
    answer.raise_for_status()
    result = answer.json()["data"]["result"]
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def host_port(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


def test_prometheus_sees_jobs_predictions_and_trainers(cluster: Cluster, tmp_path: Path) -> None:
    controller = cluster.start_controller()
    trainer = cluster.start_trainer(slots=1)
    client = cluster.client()
    targets = {"controller": host_port(controller.url), "trainer": host_port(trainer.url)}
    with prometheus_server(tmp_path / "prometheus", targets) as prometheus:
        jobs = [
            client.submit_job(
                "digits",
                model_type="SmallConvNet",
                model_id=f"p{index}",
                example_idxs=[0, 200],
                train_opts=JOB_OPTS,
            )
            for index in range(2)
        ]
        for job in jobs:
            assert client.wait_for_job(str(job["id"]), timeout=120)["state"] == "succeeded"
        for _ in range(PREDICTIONS):
            assert len(client.predict_examples("p0", EXAMPLE)) == 1
        bad = requests.post(
            f"{controller.url}/api/v1/models/p0/predict", json={"examples": [[1.0]]}, timeout=10
        )
        assert bad.status_code == 400

        expected = {
            'max(cnnswarm_jobs{state="succeeded"})': 2,
            'max(cnnswarm_jobs{state="queued"})': 0,
            'sum(cnnswarm_jobs_ended_total{state="succeeded"})': 2,
            'sum(cnnswarm_job_duration_seconds_count{state="succeeded"})': 2,
            "sum(cnnswarm_job_attempts_total)": 2,
            "sum(cnnswarm_job_queue_wait_seconds_count)": 2,
            "sum(cnnswarm_predict_duration_seconds_count)": PREDICTIONS,
            'sum(cnnswarm_predict_requests_total{model="p0",status="200"})': PREDICTIONS,
            'sum(cnnswarm_predict_requests_total{model="p0",status="400"})': 1,
            'max(cnnswarm_trainers{state="idle"})': 1,
            "sum(cnnswarm_trainer_epochs_total)": 2 * EPOCHS_PER_JOB,
            'sum(cnnswarm_trainer_attempts_ended_total{phase="succeeded"})': 2,
            'cnnswarm_trainer_info{trainer_id="trainer-1"}': 1,
            'sum(up{job=~"controller|trainer"})': 2,
        }

        def answers() -> dict[str, float | None]:
            return {promql: query(prometheus, promql) for promql in expected}

        wait_until(lambda: answers() == expected, 30, what=f"PromQL answers {expected}")
        p99 = query(
            prometheus,
            "histogram_quantile(0.99, sum by (le) (cnnswarm_predict_duration_seconds_bucket))",
        )
        assert p99 is not None and 0 < p99 < math.inf
        for promql in dashboard_queries():  # every Grafana panel's query evaluates
            answer = requests.get(
                f"{prometheus}/api/v1/query",
                params={"query": promql.replace("$__rate_interval", "1m")},
                timeout=5,
            )
            assert answer.status_code == 200 and answer.json()["status"] == "success", promql
        # Live throughput: these jobs are too short for a scrape to catch one mid-run reliably.
        assert query(prometheus, "cnnswarm_trainer_images_per_second") is not None
