"""Fixtures of the dashboard's browser tier: a real cluster (one controller, one trainer with
two slots) per module, a tiny uploaded dataset and a model trained on it through the API, and a
headless Chromium per test (``browser.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import Cluster
from support import wait_until
from ui.browser import Browser, chromium
from ui.dashboard import QUICK_OPTS, Dashboard, tiny_digits_zip


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    root = tmp_path_factory.mktemp("ui-cluster")
    with Cluster(root) as cluster:
        controller = cluster.start_controller()
        cluster.start_trainer(slots=2)
        client = controller.client()
        wait_until(lambda: len(client.list_trainers()) == 1, 30, what="the trainer registered")
        archive = root / "tiny-digits.zip"
        archive.write_bytes(tiny_digits_zip())
        dataset = client.upload_dataset(archive, name="tiny digits")
        job = client.submit_job(
            str(dataset["id"]),
            model_id="tiny-model",
            train_opts={**QUICK_OPTS, "num_epochs": 2},
        )
        done = client.wait_for_job(str(job["id"]), timeout=180)
        assert done["state"] == "succeeded", done
        yield Dashboard(cluster, controller.url, client, str(dataset["id"]), "tiny-model")
        client.close()


@pytest.fixture
def browser(dashboard: Dashboard, tmp_path: Path) -> Iterator[Browser]:
    """A fresh Chromium session on the module's cluster; the test's screenshots land in
    ``tmp_path``. Every test ends with no Content-Security-Policy violation in the console."""
    with chromium(dashboard.url, tmp_path) as session:
        yield session
        assert session.policy_violations() == []
