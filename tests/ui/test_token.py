"""The dashboard against a controller that has an API token, in a real headless Chromium:
reads need none, the first action asks for it, a wrong one is refused and asked again, the
next action goes straight through, and the token is in no URL, cookie or server log."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.webdriver.support.select import Select

from cluster import Cluster
from cnnswarm.client import Client
from ui.browser import Browser, chromium, needs_browser

pytestmark = [needs_browser, pytest.mark.e2e, pytest.mark.timeout(300)]

TOKEN = "ui-token-5f1e9c2a7b3d"
WRONG_TOKEN = "not-it-81c4e07d"
TOKEN_KEY = "cnn-swarm.api-token"


def _submit(browser: Browser, model_id: str) -> None:
    Select(browser.find("#f-dataset")).select_by_value("digits")
    field = browser.find("#f-model_id")
    field.clear()
    field.send_keys(model_id)
    browser.find("#submit-form button[type=submit]").click()


def _dialog_open(browser: Browser) -> bool:
    return browser.find("#token-dialog").get_attribute("open") is not None


def _give_token(browser: Browser, token: str) -> None:
    field = browser.find("#token-input")
    field.clear()
    field.send_keys(token)
    browser.find("#token-form button[type=submit]").click()


def test_actions_ask_for_the_token_once_and_it_stays_out_of_urls_cookies_and_logs(
    tmp_path: Path,
) -> None:
    with Cluster(tmp_path / "cluster", env={"CNN_SWARM_API_TOKEN": TOKEN}) as cluster:
        controller = cluster.start_controller()
        client = Client(controller.url, token=TOKEN)
        with chromium(controller.url, tmp_path / "browser") as browser:
            # Reading needs no token: the page lists datasets without asking.
            browser.open("/ui/")
            browser.wait(lambda: browser.find('#f-dataset option[value="digits"]'))
            assert not _dialog_open(browser)

            _submit(browser, "first")
            browser.wait(lambda: _dialog_open(browser), what="the token prompt")
            assert browser.find("#token-input").get_attribute("type") == "password"
            browser.screenshot("token-prompt")

            _give_token(browser, WRONG_TOKEN)
            browser.wait_text("#token-dialog-reason", lambda text: "refused" in text)
            assert _dialog_open(browser)
            assert client.list_jobs() == []

            _give_token(browser, TOKEN)
            first = browser.wait(lambda: browser.find("#submit-result a"), what="a queued job")
            assert not _dialog_open(browser)
            assert client.get_job(first.text)["model_id"] == "first"
            # No trainer: the table says where it waits and why.
            browser.wait_text(
                f'#jobs-body tr[data-job-id="{first.text}"]',
                lambda text: "next" in text and "no trainer" in text,
            )

            # Asked once: the next action sends the kept token without a prompt.
            _submit(browser, "second")
            browser.wait(
                lambda: [job["model_id"] for job in client.list_jobs()] == ["first", "second"],
                what="the second job queued",
            )
            assert not _dialog_open(browser)

            stored = browser.driver.execute_script(
                "return sessionStorage.getItem(arguments[0])", TOKEN_KEY
            )
            assert stored == TOKEN
            assert browser.driver.get_cookies() == []
            requested = browser.driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)"
            )
            assert TOKEN not in browser.driver.current_url
            assert not [url for url in requested if TOKEN in url]
            assert browser.policy_violations() == []

            # "Forget token" drops it: the next action asks again.
            browser.find("#token-forget").click()
            assert (
                browser.driver.execute_script(
                    "return sessionStorage.getItem(arguments[0])", TOKEN_KEY
                )
                is None
            )
            _submit(browser, "third")
            browser.wait(lambda: _dialog_open(browser), what="the token prompt again")
        client.close()
        assert TOKEN not in controller.log_path.read_text(errors="replace")
