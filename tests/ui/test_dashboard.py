"""The dashboard in a real headless Chromium against a real cluster (controller and trainer
processes on ephemeral ports): every page loads under its Content-Security-Policy with no
violation, and what a user does through it reaches the API and shows its result."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import requests
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select

from support import wait_until
from ui.browser import HOSTILE, Browser, needs_browser
from ui.dashboard import QUICK_OPTS, Dashboard, digit_pngs, tiny_digits_zip

pytestmark = [
    needs_browser,
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.xdist_group("dashboard"),  # one worker builds the module's cluster
]


def _open_the_form(browser: Browser, dashboard: Dashboard) -> int:
    """Open the jobs page with the test's dataset chosen in the form; the jobs there were."""
    browser.open("/ui/")
    browser.wait(lambda: browser.find(f'#f-dataset option[value="{dashboard.dataset_id}"]'))
    Select(browser.find("#f-dataset")).select_by_value(dashboard.dataset_id)
    return len(dashboard.client.list_jobs())


def _fill(browser: Browser, css: str, value: str) -> None:
    field = browser.find(css)
    field.clear()
    field.send_keys(value)


def test_a_job_submitted_from_the_form_finishes_with_one_curve_point_per_epoch(
    browser: Browser, dashboard: Dashboard
) -> None:
    epochs = 3
    _open_the_form(browser, dashboard)
    Select(browser.find("#f-model_type")).select_by_value("SmallConvNet")
    _fill(browser, "#f-model_id", "from-the-form")
    _fill(browser, "#f-num_epochs", str(epochs))
    _fill(browser, "#f-batch_size", str(QUICK_OPTS["batch_size"]))
    Select(browser.find("#f-optimizer")).select_by_value("adamw")
    browser.find("#submit-form button[type=submit]").click()

    link = browser.wait(lambda: browser.find("#submit-result a"), what="the queued job's link")
    job_id = link.text
    assert dashboard.client.get_job(job_id)["model_id"] == "from-the-form"
    browser.wait(lambda: browser.find(f'#jobs-body tr[data-job-id="{job_id}"]'))
    browser.screenshot("jobs")

    link.click()
    browser.wait_text("#job-facts .badge", lambda state: state == "succeeded", timeout=240)
    # The curves: one point per epoch on each chart, drawn by uPlot, and the epoch table.
    for chart in ("chart-loss", "chart-accuracy", "chart-lr"):
        browser.wait(
            lambda chart=chart: (
                browser.find(f"#{chart}").get_attribute("data-points") == str(epochs)
            ),
            what=f"{epochs} points on {chart}",
        )
        assert browser.find_all(f"#{chart} canvas"), chart
    assert len(browser.find_all("#epochs-body tr")) == epochs
    metrics = dashboard.client.get_job(job_id)["metrics"]
    assert [m["epoch"] for m in metrics] == list(range(1, epochs + 1))
    # The attempt, the options and the final model.
    assert "Attempt 1" in browser.text("#attempts")
    assert browser.text("#job-options").count("\n") >= 2
    browser.wait(lambda: browser.find('#final-model a[href="/ui/models/from-the-form"]'))
    assert browser.find("#cancel-job").get_attribute("disabled") is not None
    browser.screenshot("job")


def test_a_bad_option_shows_the_api_error_next_to_its_field(
    browser: Browser, dashboard: Dashboard
) -> None:
    before = _open_the_form(browser, dashboard)
    _fill(browser, "#f-lr", "100")
    browser.find("#submit-form button[type=submit]").click()
    message = browser.wait_text("#e-lr", bool)
    assert "lr" in message and "10" in message, message
    assert browser.find("#f-lr").get_attribute("aria-invalid") == "true"
    assert browser.text("#submit-error") == ""

    # Fixed and another field wrong: the old message goes, the new one sits by its field.
    _fill(browser, "#f-lr", "0.01")
    _fill(browser, "#f-num_epochs", "zero")
    browser.find("#submit-form button[type=submit]").click()
    browser.wait_text("#e-num_epochs", lambda text: "num_epochs" in text)
    assert browser.text("#e-lr") == ""
    assert browser.find("#f-lr").get_attribute("aria-invalid") is None
    assert len(dashboard.client.list_jobs()) == before  # nothing was queued


def test_the_form_asks_for_workers_and_shows_a_bad_count_by_its_field(
    browser: Browser, dashboard: Dashboard
) -> None:
    before = _open_the_form(browser, dashboard)
    _fill(browser, "#f-workers", "0")
    browser.find("#submit-form button[type=submit]").click()
    message = browser.wait_text("#e-workers", bool)
    assert "workers" in message, message
    assert len(dashboard.client.list_jobs()) == before  # nothing was queued


def test_an_uploaded_zip_shows_its_classes_and_a_sample_grid(
    browser: Browser, dashboard: Dashboard, tmp_path: Path
) -> None:
    archive = tmp_path / "letters.zip"
    archive.write_bytes(tiny_digits_zip({"seven": 7, "eight": 8, "nine": 9}, per_class=12))
    browser.open("/ui/datasets")
    browser.find("#upload-file").send_keys(str(archive))
    _fill(browser, "#upload-name", "three digits")
    browser.find("#upload-form button[type=submit]").click()
    link = browser.wait(lambda: browser.find("#upload-result a"), what="the upload's link")
    assert link.text == "three digits"
    assert browser.find("#upload-progress").get_attribute("value") == "1"
    browser.wait(
        lambda: any("three digits" in row.text for row in browser.find_all("#datasets-body tr"))
    )

    link.click()
    rows = browser.wait(lambda: browser.find_all(".sample-row"), what="the sample grid")
    dataset_id = browser.find("#dataset").get_attribute("data-dataset-id")
    samples = requests.get(f"{dashboard.url}/api/v1/datasets/{dataset_id}/samples", timeout=30)
    classes = samples.json()["classes"]
    assert [c["name"] for c in classes] == ["eight", "nine", "seven"]  # sorted folder names
    for row, counts in zip(rows, classes, strict=True):
        assert row.find_element(By.CSS_SELECTOR, ".sample-name").text == counts["name"]
        assert f"{counts['num_train']} train · {counts['num_test']} test" in row.text
        assert counts["num_train"] + counts["num_test"] == 12
        shown = row.find_elements(By.CSS_SELECTOR, "img.sample")
        assert len(shown) == min(8, counts["num_train"]) > 0
    images = browser.find_all(".sample-row img.sample")
    browser.wait(
        lambda: all(
            browser.driver.execute_script("return arguments[0].complete", img) for img in images
        ),
        what="the sample images loaded",
    )
    widths = [browser.driver.execute_script("return arguments[0].naturalWidth", i) for i in images]
    assert widths == [8] * len(images)  # the scans' own pixels, enlarged by the page
    browser.screenshot("dataset-samples")


def test_predicting_a_chosen_png_shows_the_top_k_classes_as_bars(
    browser: Browser, dashboard: Dashboard, tmp_path: Path
) -> None:
    image = tmp_path / "a-one.png"
    image.write_bytes(digit_pngs(1, 1)[0])
    browser.open(f"/ui/models/{dashboard.model_id}")
    browser.wait_text("#classes", lambda text: "zero" in text and "two" in text)
    browser.find("#predict-files").send_keys(str(image))
    _fill(browser, "#predict-top-k", "3")
    browser.find("#predict-form button[type=submit]").click()

    card = browser.wait(lambda: browser.find(".prediction"), what="a prediction")
    assert "a-one.png" in card.text
    bars = browser.find_all(".prediction .bar")
    assert len(bars) == 3
    labels = [bar.find_element(By.CSS_SELECTOR, ".bar-label").text for bar in bars]
    assert sorted(labels) == ["one", "two", "zero"]
    widths = [
        float(bar.find_element(By.CSS_SELECTOR, ".bar-fill").value_of_css_property("width")[:-2])
        for bar in bars
    ]
    assert widths == sorted(widths, reverse=True) and widths[0] > 0
    expected = dashboard.client.predict_images(dashboard.model_id, [image.read_bytes()], top_k=3)
    assert labels == [score["class_tag"] for score in expected[0]["top_k"]]
    preview = browser.find(".prediction img.preview")
    assert browser.driver.execute_script("return arguments[0].naturalWidth", preview) == 8
    browser.screenshot("predict")


def test_an_alias_is_set_then_moved_and_a_model_deleted(
    browser: Browser, dashboard: Dashboard
) -> None:
    client = dashboard.client
    job = client.submit_job(
        dashboard.dataset_id, model_id="short-lived", train_opts={**QUICK_OPTS, "num_epochs": 1}
    )
    assert client.wait_for_job(str(job["id"]), timeout=180)["state"] == "succeeded"

    for model_id in ("short-lived", dashboard.model_id):
        browser.open(f"/ui/models/{model_id}")
        browser.wait_text("#model-facts", lambda text: "SmallConvNet" in text)
        _fill(browser, "#alias-name", "candidate")
        browser.find("#alias-form button[type=submit]").click()
        browser.wait_text("#aliases", lambda text: "candidate" in text)
        assert client.get_model("candidate")["id"] == model_id

    browser.open("/ui/models/short-lived")
    browser.wait_text("#aliases", lambda text: "none" in text)  # the alias moved away
    browser.find("#delete-model").click()
    browser.find("#delete-yes").click()
    browser.wait(lambda: browser.driver.current_url == dashboard.url + "/ui/models")
    assert "short-lived" not in {model["id"] for model in client.list_models()}
    browser.wait(lambda: browser.find(f'#models-body tr[data-model-id="{dashboard.model_id}"]'))
    assert browser.find_all('#models-body tr[data-model-id="short-lived"]') == []


def test_the_cancel_button_cancels_a_running_job(browser: Browser, dashboard: Dashboard) -> None:
    job = dashboard.client.submit_job(
        dashboard.dataset_id, train_opts={**QUICK_OPTS, "num_epochs": 10_000}
    )
    job_id = str(job["id"])
    wait_until(
        lambda: dashboard.client.get_job(job_id)["state"] == "running", 60, what="the job runs"
    )
    browser.open(f"/ui/jobs/{job_id}")
    browser.wait_text("#job-facts .badge", lambda state: state == "running")
    browser.wait(lambda: browser.find("#cancel-job").get_attribute("disabled") is None)
    browser.find("#cancel-job").click()
    browser.wait_text("#job-facts .badge", lambda state: state == "cancelled")
    assert dashboard.client.get_job(job_id)["state"] == "cancelled"
    assert browser.find("#cancel-job").get_attribute("disabled") is not None
    # The trainer lets go of it: its slot is free again.
    wait_until(
        lambda: job_id not in dashboard.client.list_trainers()[0]["running_jobs"],
        60,
        what="the trainer dropped the cancelled job",
    )


def test_the_trainers_page_shows_slots_and_a_trainer_that_stops_heartbeating_goes_stale(
    browser: Browser, dashboard: Dashboard
) -> None:
    frozen = dashboard.cluster.start_trainer("frozen-trainer", slots=3)
    try:
        browser.open("/ui/trainers")
        row = '#trainers-body tr[data-trainer-id="frozen-trainer"]'
        browser.wait_text(row, lambda text: "idle" in text and "3 free / 3" in text)
        assert browser.find(row).get_attribute("class") == ""
        frozen.kill(signal.SIGSTOP)  # no more heartbeats, as a partitioned machine
        browser.wait(
            lambda: browser.find(row).get_attribute("data-state") == "lost",
            timeout=60,
            what="the frozen trainer shown lost",
        )
        assert browser.find(row).get_attribute("class") == "stale"
        assert "no heartbeat" in browser.text(row)
        assert "stale" in browser.text("#trainers-status")
        browser.screenshot("trainers")
    finally:
        frozen.kill()


def test_hostile_names_render_as_text_and_run_nothing(
    browser: Browser, dashboard: Dashboard, tmp_path: Path
) -> None:
    # A dataset whose name is markup (names are free text) ...
    named = tmp_path / "named.zip"
    named.write_bytes(tiny_digits_zip({"zero": 0, "one": 1}, per_class=5))
    hostile_dataset = dashboard.client.upload_dataset(named, name=HOSTILE)
    # ... and an upload whose class folder is markup (refused, and the refusal quotes it).
    folder = tmp_path / "folder.zip"
    folder.write_bytes(tiny_digits_zip({HOSTILE: 0, "one": 1}, per_class=5))

    browser.open("/ui/datasets")
    browser.find("#upload-file").send_keys(str(folder))
    browser.find("#upload-form button[type=submit]").click()
    browser.wait_text("#upload-error", lambda text: HOSTILE in text)
    browser.wait(
        lambda: any(cell.text == HOSTILE for cell in browser.find_all("#datasets-body td a"))
    )
    _assert_inert(browser)

    browser.open(f"/ui/datasets/{hostile_dataset['id']}")
    browser.wait_text("#dataset-name", lambda text: text == HOSTILE)
    browser.wait(lambda: browser.find_all(".sample-row"))
    _assert_inert(browser)

    browser.open("/ui/")
    option = f'#f-dataset option[value="{hostile_dataset["id"]}"]'
    browser.wait(lambda: HOSTILE in str(browser.find(option).get_attribute("textContent")))
    _assert_inert(browser)

    # A URL that is markup: the page repeats it as text, and the API's refusal too.
    browser.open("/ui/jobs/" + HOSTILE)
    browser.wait_text("#job-error", lambda text: "Cannot load job" in text)
    assert HOSTILE in browser.text("#job-title")
    _assert_inert(browser)


def _assert_inert(browser: Browser) -> None:
    """No element came from a name, and no script ran."""
    assert browser.find_all('img[src="x"]') == []
    assert browser.alert_text() is None
    assert (
        browser.driver.execute_script("return document.querySelectorAll('[onerror]').length") == 0
    )


def test_every_page_is_sent_with_its_policy_and_loads_only_from_this_origin(
    browser: Browser, dashboard: Dashboard
) -> None:
    pages = [
        "/ui/",
        "/ui/models",
        "/ui/datasets",
        "/ui/trainers",
        "/ui/sweeps",
        f"/ui/models/{dashboard.model_id}",
    ]
    for path in pages:
        answer = requests.get(dashboard.url + path, timeout=10)
        assert answer.status_code == 200, path
        policy = answer.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy, path
        browser.open(path)
        loaded = browser.driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert loaded and all(url.startswith(dashboard.url + "/") for url in loaded), loaded
    # A browser asking for / lands on the dashboard; the seed's clients keep their answer.
    browser.open("/")
    assert browser.driver.current_url == dashboard.url + "/ui/"
    assert "running" in requests.get(dashboard.url + "/", timeout=10).text


def test_a_sweep_page_shows_the_leaderboard_best_first_and_a_curve_per_trial(
    browser: Browser, dashboard: Dashboard
) -> None:
    sweep = dashboard.client.submit_sweep(
        dashboard.dataset_id,
        {"lr": {"choice": [0.0003, 0.01]}},
        train_opts={**QUICK_OPTS, "num_epochs": 2},
        sampler="grid",
        max_parallel=1,
    )
    sweep_id = str(sweep["id"])
    browser.open(f"/ui/sweeps/{sweep_id}")
    browser.wait_text("#sweep-facts .badge", lambda state: state == "succeeded", timeout=240)
    done = dashboard.client.get_sweep(sweep_id)
    values = {trial["number"]: trial["value"] for trial in done["trials"]}
    shown = [int(row.get_attribute("data-trial")) for row in browser.find_all("#board-body tr")]
    assert shown == sorted(values, key=lambda number: (-values[number], number))
    assert browser.find("#chart-trials").get_attribute("data-series") == "2"
    assert done["best_model"] in browser.text("#sweep-facts")
    assert browser.find("#cancel-sweep").get_attribute("disabled") is not None
    browser.screenshot("sweep")
    browser.open("/ui/sweeps")
    browser.wait_text(f'#sweeps-body tr[data-sweep-id="{sweep_id}"]', lambda t: "2 / 2" in t)
