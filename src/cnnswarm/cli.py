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
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cnnswarm.client import Client, ClientError
from cnnswarm.config import ConfigError, Settings, load_client_settings, load_settings
from cnnswarm.progress import ProgressBar, format_table, format_time, last_metrics

Handler = Callable[[argparse.Namespace], int]


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


def _client(args: argparse.Namespace) -> Client:
    """A client of the controller the flags name, else the one the environment names."""
    flags = {"CNN_SWARM_URL": args.url, "CNN_SWARM_API_TOKEN": args.token}
    settings = load_client_settings({**os.environ, **{k: v for k, v in flags.items() if v}})
    return Client(settings.url, token=settings.api_token or None)


def _emit_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


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
    from cnnswarm.local import die_with_parent
    from cnnswarm.serve import serve_controller

    settings = _serve_settings(args, "controller")
    die_with_parent()
    serve_controller(settings, url_file=args.url_file)
    return 0


def cmd_trainer(args: argparse.Namespace) -> int:
    from cnnswarm.local import die_with_parent
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
    client = _client(args)
    job = client.submit_job(
        args.dataset,
        model_type=args.model_type,
        model_id=args.model_id,
        example_idxs=args.example_idxs,
        train_opts=train_opts or None,
        idempotency_key=args.idempotency_key,
    )
    if not args.wait:
        if args.json:
            _emit_json(job)
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
        _emit_json(job)
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
    jobs = _client(args).list_jobs(state=args.state)
    if args.json:
        _emit_json(jobs)
    else:
        print(format_table(JOB_HEADERS, [_job_row(job) for job in jobs]))
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    job = _client(args).get_job(args.job_id)
    if args.json:
        _emit_json(job)
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
    job = _client(args).cancel_job(args.job_id)
    if args.json:
        _emit_json(job)
    else:
        print(f"job {job.get('id', args.job_id)}: {job.get('state', 'cancel requested')}")
    return 0


# -- models, datasets, predict, cluster ---------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    models = _client(args).list_models()
    if args.json:
        _emit_json(models)
        return 0
    rows = []
    for model in models:
        metrics = model.get("metrics") or []
        last = metrics[-1] if metrics and isinstance(metrics[-1], dict) else {}
        aliases = model.get("aliases")
        rows.append(
            [
                model.get("id"),
                model.get("model_type"),
                model.get("dataset"),
                last.get("test_accuracy"),
                ",".join(aliases) if isinstance(aliases, list) else aliases,
                format_time(model.get("created", model.get("created_at"))),
            ]
        )
    print(format_table(["ID", "TYPE", "DATASET", "TEST_ACC", "ALIASES", "CREATED"], rows))
    return 0


def _imported_line(model: dict[str, Any]) -> str:
    classes = model.get("classes")
    line = f"imported {model.get('id')}: {model.get('model_type')}"
    if isinstance(classes, list):
        line += f", {len(classes)} classes"
    recalibration = model.get("recalibration")
    if isinstance(recalibration, dict):
        rows = recalibration.get("example_idxs")
        line += (
            f"; batch norms recalibrated on {recalibration.get('images')} training images of "
            f"{recalibration.get('dataset')}"
        )
        if isinstance(rows, list) and len(rows) == 2:
            line += f" (rows {rows[0]}..{rows[1]})"
    return line


def cmd_models_import(args: argparse.Namespace) -> int:
    model = _client(args).import_model(
        args.file,
        args.id,
        classes=args.classes,
        dataset=args.dataset,
        example_idxs=args.example_idxs,
    )
    if args.json:
        _emit_json(model)
    else:
        print(_imported_line(model))
    return 0


def _seed_model_info(home: Path) -> dict[str, dict[str, Any]]:
    """The seed's ``torch_models/model_info.json``: model id -> its entry."""
    path = home / "torch_models" / "model_info.json"
    try:
        info = json.loads(path.read_text())
    except ValueError as exc:
        raise OSError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
        raise OSError(f"{path} is not the seed's model_info.json (an object of model entries)")
    return info


def cmd_models_import_seed(args: argparse.Namespace) -> int:
    """Import every model a seed ``HOME_DIR`` lists; ids already here are skipped."""
    home = Path(args.home_dir).expanduser()
    entries = _seed_model_info(home)
    client = _client(args)
    existing = {model.get("id") for model in client.list_models()}
    failed = 0
    for model_id, entry in entries.items():
        if model_id in existing:
            print(f"skipped {model_id}: a model with this id already exists")
            continue
        path = home / "torch_models" / str(entry.get("filename") or f"{model_id}.pth")
        try:
            model = client.import_model(
                path, model_id, dataset=args.dataset, example_idxs=entry.get("example_idxs")
            )
        except ClientError as exc:
            if exc.status == 0:
                raise  # the controller is gone: every other import would fail the same way
            if exc.status == 409:
                print(f"skipped {model_id}: {exc.error}")
                continue
            failed += 1
            print(f"failed {model_id}: {exc.message}", file=sys.stderr)
            continue
        except OSError as exc:
            failed += 1
            print(f"failed {model_id}: {exc}", file=sys.stderr)
            continue
        print(_imported_line(model))
    return 1 if failed else 0


def cmd_models_download(args: argparse.Namespace) -> int:
    suffix = ".torchscript.pt" if args.torchscript else ".pth"
    target = args.output or Path(f"{args.model_id}{suffix}")
    path = _client(args).download_model(args.model_id, target, torchscript=args.torchscript)
    print(f"saved {path} ({path.stat().st_size} bytes)")
    return 0


def _add_model_commands(models: argparse.ArgumentParser) -> None:
    """``models import``, ``models import-seed`` and ``models download``."""
    actions = models.add_subparsers(dest="models_command", metavar="ACTION")
    one = actions.add_parser(
        "import", help="import a model file (a seed .pth or a cnn-swarm model file)"
    )
    one.set_defaults(handler=cmd_models_import)
    one.add_argument("file", type=Path)
    one.add_argument("--id", required=True, help="the new model's id")
    one.add_argument(
        "--classes",
        type=lambda text: [name.strip() for name in text.split(",")],
        help="a seed file's class names, comma-separated (default for 10: CIFAR-10's)",
    )
    one.add_argument(
        "--dataset", help="the dataset it was trained on (default for seed files: cifar10)"
    )
    one.add_argument(
        "--example-idxs", type=int, nargs=2, metavar=("START", "END"), help="its training rows"
    )
    seed = actions.add_parser(
        "import-seed", help="import every model of a seed HOME_DIR (torch_models/model_info.json)"
    )
    seed.set_defaults(handler=cmd_models_import_seed)
    seed.add_argument("home_dir", help="the seed's HOME_DIR")
    seed.add_argument("--dataset", help="the dataset they were trained on (default: cifar10)")
    download = actions.add_parser("download", help="save a model's file, or a TorchScript export")
    download.set_defaults(handler=cmd_models_download)
    download.add_argument("model_id")
    download.add_argument("--torchscript", action="store_true", help="a frozen TorchScript export")
    download.add_argument(
        "-o", "--output", type=Path, help="where to save it (default: ID.pth or ID.torchscript.pt)"
    )


def cmd_alias(args: argparse.Namespace) -> int:
    answer = _client(args).set_alias(args.alias, args.model_id)
    if args.json:
        _emit_json(answer)
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
    client = _client(args)
    if args.datasets_command == "upload":
        dataset = client.upload_dataset(args.file, name=args.name or args.file.stem)
        if args.json:
            _emit_json(dataset)
        else:
            print(format_table(DATASET_HEADERS, [_dataset_row(dataset)]))
        return 0
    if args.datasets_command == "delete":
        client.delete_dataset(args.dataset_id)
        print(f"deleted dataset {args.dataset_id}")
        return 0
    datasets = client.list_datasets()
    if args.json:
        _emit_json(datasets)
    else:
        print(format_table(DATASET_HEADERS, [_dataset_row(d) for d in datasets]))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    predictions = _client(args).predict_images(args.model, args.images, top_k=args.top_k)
    if args.json:
        _emit_json(predictions)
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
    status = _client(args).status()
    if args.json:
        _emit_json(status)
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
    _add_model_commands(add("models", cmd_models, "list models, or import / download one"))
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
