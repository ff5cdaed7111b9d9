"""The dashboard's pages: each renders a shell whose script reads the API and takes actions
through it. The only server-side facts a page carries are declarations (the model types and
the train options' schema), so the submit form cannot drift from what the API validates."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, render_template

from cnnswarm.ml.models import model_names
from cnnswarm.ml.train_options import TrainOptions

bp = Blueprint(
    "ui",
    __name__,
    url_prefix="/ui",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

# Same origin only, no inline script or style (uPlot and the page scripts style elements
# through the CSSOM, which the policy allows); blob: and data: images are the predict
# playground's previews of files the user picked, which never leave the browser.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)

# The options the submit form offers, in this order; the rest keep their defaults.
FORM_OPTIONS = (
    "num_epochs",
    "batch_size",
    "lr",
    "optimizer",
    "momentum",
    "weight_decay",
    "scheduler_mode",
    "augment",
    "seed",
)
LABELS = {
    "num_epochs": "Epochs",
    "batch_size": "Batch size",
    "lr": "Learning rate",
    "optimizer": "Optimizer",
    "momentum": "Momentum",
    "weight_decay": "Weight decay",
    "scheduler_mode": "LR schedule",
    "augment": "Augment",
    "seed": "Seed",
}


def form_options() -> list[dict[str, Any]]:
    """The submit form's train option fields, read from ``TrainOptions``' JSON schema: name,
    label, kind (integer, number, choice, boolean), bounds, choices and description."""
    properties = TrainOptions.json_schema()["properties"]
    fields = []
    for name in FORM_OPTIONS:
        schema = properties[name]
        # "x or null" options (seed) are offered as x: an empty field already means the default.
        schema = next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), schema) | {
            key: value for key, value in schema.items() if key != "anyOf"
        }
        kind = "choice" if "enum" in schema else str(schema.get("type", "string"))
        fields.append(
            {
                "name": name,
                "label": LABELS[name],
                "kind": kind,
                "minimum": schema.get("minimum"),
                "maximum": schema.get("maximum"),
                "choices": schema.get("enum", []),
                "description": schema.get("description", ""),
            }
        )
    return fields


def _page(template: str, page: str, **context: Any) -> str:
    return render_template(f"ui/{template}", page=page, **context)


@bp.get("/")
def jobs_page() -> str:
    """Jobs: the live table, the state filter and the submit form."""
    return _page("jobs.html", "jobs", model_types=model_names(), options=form_options())


@bp.get("/jobs/<job_id>")
def job_page(job_id: str) -> str:
    """One job: curves, attempts, options, final model, cancel."""
    return _page("job.html", "jobs", job_id=job_id)


@bp.get("/models")
def models_page() -> str:
    """Models: the list."""
    return _page("models.html", "models")


@bp.get("/models/<model_id>")
def model_page(model_id: str) -> str:
    """One model: metrics, classes, aliases, delete, the predict playground."""
    return _page("model.html", "models", model_id=model_id)


@bp.get("/datasets")
def datasets_page() -> str:
    """Datasets: built-ins and uploads, and the upload form."""
    return _page("datasets.html", "datasets")


@bp.get("/datasets/<dataset_id>")
def dataset_page(dataset_id: str) -> str:
    """One dataset: class counts and a grid of sample images per class."""
    return _page("dataset.html", "datasets", dataset_id=dataset_id)


@bp.get("/sweeps")
def sweeps_page() -> str:
    """Sweeps: each sweep's state, trial counts and best value."""
    return _page("sweeps.html", "sweeps")


@bp.get("/sweeps/<sweep_id>")
def sweep_page(sweep_id: str) -> str:
    """One sweep: its leaderboard, each trial's curve, cancel."""
    return _page("sweep.html", "sweeps", sweep_id=sweep_id)


@bp.get("/trainers")
def trainers_page() -> str:
    """Trainers: live state, slots, running jobs, last heartbeat."""
    return _page("trainers.html", "trainers")


@bp.after_request
def page_headers(response: Response) -> Response:
    """Every page and asset: the policy above, taken only as the type it is sent as, and no
    referrer (a job or model id in this page's URL stays here)."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
