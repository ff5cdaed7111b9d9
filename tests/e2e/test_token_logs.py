"""The API token never reaches a log: a real cluster with a token sees a successful job, a
failed job, a refused request and 401s, then every controller, trainer and job log is read."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from cluster import Cluster
from cnnswarm.client import Client, ClientError
from support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

TOKEN = "tok-e2e-7d3c91f0b2a4"
WRONG_TOKEN = "guess-4b8e2a6c19"


def _expect_401(call: object) -> None:
    assert callable(call)
    with pytest.raises(ClientError) as caught:
        call()
    assert caught.value.status == 401, caught.value


def test_the_token_is_in_no_controller_trainer_or_job_log(tmp_path: Path) -> None:
    with Cluster(tmp_path / "cluster", env={"CNN_SWARM_API_TOKEN": TOKEN}) as cluster:
        controller = cluster.start_controller()
        trainer = cluster.start_trainer()
        client = Client(controller.url, token=TOKEN, timeout=30)
        wait_until(lambda: len(client.list_trainers()) == 1, 20, what="the trainer registered")

        # A success: a job trains, publishes its model, and the model serves.
        good = client.submit_job(
            "digits",
            model_type="SmallConvNet",
            model_id="good",
            example_idxs=(0, 300),
            train_opts={"num_epochs": 1, "seed": 0},
        )
        # A failure: the trainer cannot place the model on a device it does not have.
        bad = client.submit_job(
            "digits",
            model_type="SmallConvNet",
            model_id="bad",
            example_idxs=(0, 300),
            train_opts={"num_epochs": 1, "device": "cuda:63"},
        )
        assert client.wait_for_job(str(good["id"]), timeout=120)["state"] == "succeeded"
        failed = client.wait_for_job(str(bad["id"]), timeout=120)
        assert failed["state"] == "failed" and "cuda" in str(failed["error"])
        assert len(client.predict_examples("good", [[[[0.0] * 8] * 8]])) == 1
        # A refused request, with the right token.
        with pytest.raises(ClientError) as refused:
            client.submit_job("digits", train_opts={"lr": -1})
        assert refused.value.status == 400

        # 401s: no token and a wrong one, on the controller's public and internal routes and
        # on the trainer (reads are open; writes and internal routes need the token).
        _expect_401(lambda: Client(controller.url).submit_job("digits"))
        _expect_401(lambda: Client(controller.url, token=WRONG_TOKEN).set_alias("prod", "good"))
        for url in (f"{controller.url}/internal/v1/heartbeat", f"{trainer.url}/train"):
            answer = requests.post(
                url, json={}, headers={"Authorization": f"Bearer {WRONG_TOKEN}"}, timeout=10
            )
            assert answer.status_code == 401, (url, answer.text)

        def logs_with_the_trainers_401() -> dict[str, str] | None:
            logs = sorted((cluster.root / "logs").glob("*.log"))
            texts = {path.name: path.read_text(errors="replace") for path in logs}
            return texts if " 401 " in texts.get("trainer-1.log", "") else None

        # gunicorn writes a request's access line after the response has gone out, so the
        # trainer's 401 line can land a moment after the client has its answer.
        texts = wait_until(
            logs_with_the_trainers_401, 10, what="the trainer's access line for its 401"
        )

    # The logs hold what happened, so a token in them would be found...
    assert sorted(texts) == ["controller-1.log", "trainer-1.log"]
    assert " 401 " in texts["controller-1.log"] and " 400 " in texts["controller-1.log"]
    assert f"job {bad['id']}: ERROR job failed" in texts["trainer-1.log"]  # the job's own log
    # ...and it is not there, nor the wrong one a client sent.
    for name, text in texts.items():
        assert TOKEN not in text, name
        assert WRONG_TOKEN not in text, name
