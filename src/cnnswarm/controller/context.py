"""The controller's per-app state, reachable from every route as ``ctx()``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from cnnswarm.config import Settings
from cnnswarm.http import require_token
from cnnswarm.store import Stores

if TYPE_CHECKING:
    from cnnswarm.controller.datasets import DatasetService
    from cnnswarm.controller.metrics import ControllerMetrics
    from cnnswarm.controller.predictor import Predictor
    from cnnswarm.controller.scheduler import Scheduler


@dataclass
class ControllerContext:
    """Settings, stores and services of one controller process."""

    settings: Settings
    stores: Stores
    datasets: DatasetService
    scheduler: Scheduler
    predictor: Predictor
    metrics: ControllerMetrics
    ready: bool = False


def ctx() -> ControllerContext:
    """The current app's controller context."""
    context: ControllerContext = current_app.extensions["cnnswarm"]
    return context


# The controller's routes that change state need its API token (when one is configured).
token_required = require_token(lambda: ctx().settings.api_token)
