"""The monitoring files under ``deploy/``: the Grafana dashboard queries only series that the
controller and trainers export, and the Prometheus scrape configs are valid and find the
services of the compose file and the swarm stack by DNS."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cnnswarm.config import Settings
from cnnswarm.controller.app import create_app as create_controller
from cnnswarm.trainer.app import create_app as create_trainer
from support import dashboard_queries

ROOT = Path(__file__).resolve().parents[1]
SCRAPE_CONFIGS = sorted((ROOT / "deploy" / "prometheus").glob("*.yml"))
SERIES_NAME = re.compile(r"\bcnnswarm_[a-z_]+")


def exported_names(tmp_path: Path) -> set[str]:
    """Sample names a fresh controller and trainer export."""
    controller = create_controller(Settings(home_dir=tmp_path / "controller"))
    trainer = create_trainer(
        Settings(home_dir=tmp_path / "trainer", controller_url="http://127.0.0.1:9")
    )
    try:
        names = set()
        for app in (controller, trainer):
            app.test_client().get("/healthz")  # one request, so the HTTP series have samples
            text = app.test_client().get("/metrics").get_data(as_text=True)
            for family in text_string_to_metric_families(text):
                names.add(family.name)
                if family.type == "counter":  # the parser names counter families without it
                    names.add(family.name + "_total")
                names.update(sample.name for sample in family.samples)
        return names
    finally:
        controller.extensions["cnnswarm"].stores.close()


def test_the_dashboard_queries_only_exported_series(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 20
    used = {name for query in queries for name in SERIES_NAME.findall(query)}
    # Histogram families export _bucket/_count/_sum samples that may have no sample yet.
    exported = exported_names(tmp_path)
    missing = {
        name
        for name in used
        if name not in exported and re.sub(r"_(bucket|count|sum)$", "", name) not in exported
    }
    assert not missing


def test_scrape_configs_find_the_services_by_dns() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    stack = (ROOT / "docker-stack.yml").read_text()
    for config in SCRAPE_CONFIGS:
        text = config.read_text()
        assert "dns_sd_configs" in text and "static_configs" not in text
        assert "port: 48515" in text and "port: 48516" in text
    assert "names: [ml_train]" in (ROOT / "deploy/prometheus/compose.yml").read_text()
    assert "names: [tasks.ml_train]" in (ROOT / "deploy/prometheus/swarm.yml").read_text()
    for service in ("ml_controller:", "ml_train:"):
        assert service in compose and service in stack


def test_scrape_configs_are_valid_for_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian's prometheus) is not installed")
    result = subprocess.run(
        [promtool, "check", "config", *map(str, SCRAPE_CONFIGS)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
