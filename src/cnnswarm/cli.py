"""The `cnn-swarm` command: serve a controller or trainer, run a local cluster, drive the API.

Client commands talk to ``--url`` through ``cnnswarm.client`` with ``--token``; without the
flags they read ``cnnswarm.config.load_client_settings`` (``CNN_SWARM_URL``, and
``CNN_SWARM_API_TOKEN`` or ``CNN_SWARM_API_TOKEN_FILE`` as the servers read them). A server
error prints the server's message (``status exception: error``) to stderr and exits 1; bad
settings exit 2; no command prints a traceback for an expected failure.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnswarm.cli_models import add_model_commands, cmd_models
from cnnswarm.cli_support import Handler, client_from_args, emit_json
from cnnswarm.cli_sweeps import add_sweep_commands
from cnnswarm.client_error import ClientError
from cnnswarm.config import ConfigError, Settings, load_settings
from cnnswarm.progress import ProgressBar, format_table, format_time, last_metrics


def _parse_opt(text: str) -> tuple[str, Any]:
    """``key=value`` -> (key, value), the value read as JSON when it is JSON (``3``, ``0.1``,
    ``true``, ``[1,2]``), else kept as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


# -- serving ------------------------------------------------------------------------------------


def _serve_settings(args: argparse.Namespace, role: str) -> Settings:
    """Settings from the environment, with the command's flags on top."""
    overrides: dict[str, Any] = {}
    prefix = "controller" if role == "controller" else "train"
    if args.host is not None:
        overrides[f"{prefix}_host"] = args.host
    if args.port is not None:
        overrides[f"{prefix}_port"] = args.port
    if args.home is not None:
        overrides["home_dir"] = Path(args.home).expanduser()
    if role == "trainer":
        if args.controller_url is not None:
            overrides["controller_url"] = args.controller_url
        if args.slots is not None:
            overrides["trainer_slots"] = args.slots
    if args.token:
        overrides["api_token"] = args.token
    return load_settings().with_overrides(**overrides)


def cmd_controller(args: argparse.Namespace) -> int:
    from cnnswarm.parent_process import die_with_parent
    from cnnswarm.serve import serve_controller

    settings = _serve_settings(args, "controller")
    die_with_parent()
    serve_controller(settings, url_file=args.url_file)
    return 0


def cmd_trainer(args: argparse.Namespace) -> int:
    from cnnswarm.parent_process import die_with_parent
    from cnnswarm.serve import serve_trainer

    settings = _serve_settings(args, "trainer")
    die_with_parent()
    serve_trainer(settings, url_file=args.url_file)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from cnnswarm.local import run_local_cluster

    settings = load_settings()
    return run_local_cluster(
        trainers=args.trainers,
        port=settings.controller_port if args.port is None else args.port,
        home=Path(args.home).expanduser() if args.home else settings.home_dir,
        host=args.host,
        url_file=args.url_file,
        token=args.token or "",
    )


# -- jobs ---------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    train_opts: dict[str, Any] = dict(args.opt or [])
    if args.epochs is not None:
        train_opts["num_epochs"] = args.epochs
    client = client_from_args(args)
    job = client.submit_job(
        args.dataset,
        model_type=args.model_type,
        model_id=args.model_id,
        example_idxs=args.example_idxs,
        train_opts=train_opts or None,
        idempotency_key=args.idempotency_key,
        workers=args.workers,
        min_workers=args.min_workers,
    )
    if not args.wait:
        if args.json:
            emit_json(job)
        else:
            print(f"job {job.get('id')} {job.get('state')}: model {job.get('model_id')}")
        return 0
    print(f"job {job.get('id')}: training model {job.get('model_id')}", file=sys.stderr)
    bar = ProgressBar(sys.stderr, total_epochs=train_opts.get("num_epochs"))
    try:
        job = client.wait_for_job(str(job["id"]), timeout=args.timeout, on_update=bar.update)
    except KeyboardInterrupt:
        bar.finish()
        print(f"stopped waiting; job {job.get('id')} carries on", file=sys.stderr)
        return 130
    except TimeoutError as exc:
        bar.finish()
        print(f"cnn-swarm: {exc}", file=sys.stderr)
        return 1
    bar.finish()
    if args.json:
        emit_json(job)
    state = job.get("state")
    if state != "succeeded":
        print(f"job {job.get('id')} {state}: {job.get('error') or 'no reason given'}")
        return 1
    metrics = last_metrics(job)
    accuracy = metrics.get("test_accuracy")
    summary = f", test accuracy {accuracy:.3f}" if isinstance(accuracy, int | float) else ""
    print(f"job {job.get('id')} succeeded: model {job.get('model_id')}{summary}")
    return 0


def _job_row(job: dict[str, Any]) -> list[Any]:
    progress = job.get("progress")
    percent = f"{100 * progress:.0f}%" if isinstance(progress, int | float) else None
    return [
        job.get("id"),
        job.get("state"),
        job.get("model_id"),
        job.get("dataset"),
        job.get("model_type"),
        percent,
        job.get("epoch"),
        job.get("attempt"),
        job.get("trainer"),
    ]


JOB_HEADERS = ["ID", "STATE", "MODEL", "DATASET", "TYPE", "PROGRESS", "EPOCH", "ATTEMPT", "TRAINER"]


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = client_from_args(args).list_jobs(state=args.state)
    if args.json:
        emit_json(jobs)
    else:
        print(format_table(JOB_HEADERS, [_job_row(job) for job in jobs]))
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    job = client_from_args(args).get_job(args.job_id)
    if args.json:
        emit_json(job)
        return 0
    for key in sorted(job):
        value = job[key]
        if key == "metrics":
            continue
        if isinstance(value, dict | list):
            value = json.dumps(value)
        print(f"{key}: {format_time(value) if key.endswith('_at') else value}")
    metrics = job.get("metrics") or []
    if metrics:
        keys = ["epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"]
        print()
        print(format_table([k.upper() for k in keys], [[m.get(k) for k in keys] for m in metrics]))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    job = client_from_args(args).cancel_job(args.job_id)
    if args.json:
        emit_json(job)
    else:
        print(f"job {job.get('id', args.job_id)}: {job.get('state', 'cancel requested')}")
    return 0


# -- aliases, datasets, predict, cluster --------------------------------------------------------


def cmd_alias(args: argparse.Namespace) -> int:
    answer = client_from_args(args).set_alias(args.alias, args.model_id)
    if args.json:
        emit_json(answer)
    else:
        print(f"{args.alias} -> {answer.get('model_id', args.model_id)}")
    return 0


def _dataset_row(dataset: dict[str, Any]) -> list[Any]:
    classes = dataset.get("classes")
    shape = dataset.get("shape")
    return [
        dataset.get("id"),
        dataset.get("name"),
        len(classes) if isinstance(classes, list) else dataset.get("num_classes"),
        dataset.get("num_train"),
        dataset.get("num_test"),
        "x".join(str(d) for d in shape) if isinstance(shape, list) else shape,
        dataset.get("description"),
    ]


DATASET_HEADERS = ["ID", "NAME", "CLASSES", "TRAIN", "TEST", "SHAPE", "DESCRIPTION"]


def cmd_datasets(args: argparse.Namespace) -> int:
    client = client_from_args(args)
    if args.datasets_command == "upload":
        dataset = client.upload_dataset(args.file, name=args.name or args.file.stem)
        if args.json:
            emit_json(dataset)
        else:
            print(format_table(DATASET_HEADERS, [_dataset_row(dataset)]))
        return 0
    if args.datasets_command == "delete":
        client.delete_dataset(args.dataset_id)
        print(f"deleted dataset {args.dataset_id}")
        return 0
    datasets = client.list_datasets()
    if args.json:
        emit_json(datasets)
    else:
        print(format_table(DATASET_HEADERS, [_dataset_row(d) for d in datasets]))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    predictions = client_from_args(args).predict_images(args.model, args.images, top_k=args.top_k)
    if args.json:
        emit_json(predictions)
        return 0
    rows: list[list[Any]] = []
    for image, prediction in zip(args.images, predictions, strict=False):
        ranked = prediction.get("top_k") or [prediction]
        for rank, entry in enumerate(ranked, start=1):
            name = Path(image).name if rank == 1 else ""
            probability = entry.get("probability")
            shown = f"{probability:.4f}" if isinstance(probability, int | float) else None
            rows.append([name, rank, entry.get("class_tag"), entry.get("class_idx"), shown])
    print(format_table(["FILE", "RANK", "CLASS", "INDEX", "PROBABILITY"], rows))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = client_from_args(args).status()
    if args.json:
        emit_json(status)
        return 0
    for key in sorted(status):
        value = status[key]
        if isinstance(value, dict) and all(isinstance(v, int) for v in value.values()):
            value = ", ".join(f"{name} {count}" for name, count in value.items())
        if key != "train_jobs" and not isinstance(value, dict | list):
            print(f"{key}: {value}")
    rows = []
    for trainer in status.get("train_jobs") or []:
        jobs = trainer.get("jobs") or {}
        running = [job_id for job_id, job in jobs.items() if not job.get("complete")]
        slots = trainer.get("slots")
        rows.append(
            [
                trainer.get("url"),
                trainer.get("trainer_id"),
                # /status lists each trainer's slots and jobs; its free slots are the difference.
                max(0, slots - len(running)) if isinstance(slots, int) else None,
                slots,
                ",".join(running) or None,
            ]
        )
    print(format_table(["TRAINER", "ID", "FREE", "SLOTS", "RUNNING"], rows))
    return 0


# -- argument parsing ---------------------------------------------------------------------------


def _add_serve_flags(parser: argparse.ArgumentParser, role: str) -> None:
    parser.add_argument("--host", help="address to bind (env FLASK_*_HOST)")
    parser.add_argument("--port", type=int, help="port to bind; 0 for an ephemeral one")
    parser.add_argument("--home", help="state directory (env HOME_DIR)")
    if role == "trainer":
        parser.add_argument("--controller-url", help="where to reach the controller")
        parser.add_argument("--slots", type=int, help="concurrent jobs (env TRAINER_SLOTS)")
    parser.add_argument("--url-file", type=Path, help="write the bound URL here once listening")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line of ``cnn-swarm``."""
    parser = argparse.ArgumentParser(prog="cnn-swarm", description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="controller URL (env CNN_SWARM_URL)")
    parser.add_argument(
        "--token", help="API token (env CNN_SWARM_API_TOKEN or CNN_SWARM_API_TOKEN_FILE)"
    )
    parser.add_argument("--json", action="store_true", help="print raw JSON answers")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    _add_serve_flags(add("controller", cmd_controller, "serve the controller (gunicorn)"), "")
    _add_serve_flags(add("trainer", cmd_trainer, "serve a trainer (gunicorn)"), "trainer")

    up = add("up", cmd_up, "run a controller and N trainers locally until Ctrl-C")
    up.add_argument("--trainers", type=int, default=2, help="number of trainers (default 2)")
    up.add_argument("--port", type=int, help="controller port (default FLASK_CONTROLLER_PORT)")
    up.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    up.add_argument("--home", help="state directory (default HOME_DIR)")
    up.add_argument("--url-file", type=Path, help="write the controller URL here when ready")

    train = add("train", cmd_train, "submit a training job")
    train.add_argument("--dataset", default="cifar10", help="dataset id or built-in name")
    train.add_argument("--model-type", help="model architecture (default: chosen by shape)")
    train.add_argument("--model-id", help="name of the model to create (default: generated)")
    train.add_argument("--epochs", type=int, help="train_opts num_epochs")
    train.add_argument(
        "--opt", type=_parse_opt, action="append", metavar="KEY=VALUE", help="a train option"
    )
    train.add_argument(
        "--example-idxs", type=int, nargs=2, metavar=("START", "END"), help="training rows"
    )
    train.add_argument("--idempotency-key", help="makes a retried submission safe")
    train.add_argument(
        "--workers", type=int, help="train on this many trainers at once (data-parallel)"
    )
    train.add_argument("--min-workers", type=int, help="a resumed attempt may run on this few")
    train.add_argument("--wait", action="store_true", help="follow progress until the end")
    train.add_argument("--timeout", type=float, help="with --wait: give up after seconds")

    predict = add("predict", cmd_predict, "classify image files")
    predict.add_argument("model", help="model id or alias")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--top-k", type=int, default=3, help="classes per image (default 3)")

    add("status", cmd_status, "show the cluster's status")
    jobs = add("jobs", cmd_jobs, "list jobs")
    jobs.add_argument("--state", help="only jobs in this state")
    add("job", cmd_job, "show one job").add_argument("job_id")
    add("cancel", cmd_cancel, "cancel a job").add_argument("job_id")
    add_model_commands(add("models", cmd_models, "list models, or import / download one"))
    add_sweep_commands(add)
    alias = add("alias", cmd_alias, "point an alias at a model")
    alias.add_argument("alias")
    alias.add_argument("model_id")

    datasets = add("datasets", cmd_datasets, "list datasets, or upload / delete one")
    dataset_commands = datasets.add_subparsers(dest="datasets_command", metavar="ACTION")
    upload = dataset_commands.add_parser("upload", help="upload a zip, tar or npz dataset")
    upload.add_argument("file", type=Path)
    upload.add_argument("--name", help="dataset name (default: the file's)")
    dataset_commands.add_parser("delete", help="delete an uploaded dataset").add_argument(
        "dataset_id"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cnn-swarm` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except ClientError as exc:
        print(f"cnn-swarm: {exc.message}", file=sys.stderr)
        if exc.field:
            print(f"  field: {exc.field}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"cnn-swarm: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"cnn-swarm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
