"""`cnn-swarm models`: list models, import a model file or a seed ``HOME_DIR``'s models, and
download a model's file or its TorchScript export (through ``cnnswarm.client``, HTTP only)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cnnswarm.cli_support import client_from_args, emit_json
from cnnswarm.client_error import ClientError
from cnnswarm.progress import format_table, format_time


def cmd_models(args: argparse.Namespace) -> int:
    models = client_from_args(args).list_models()
    if args.json:
        emit_json(models)
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
    model = client_from_args(args).import_model(
        args.file,
        args.id,
        classes=args.classes,
        dataset=args.dataset,
        example_idxs=args.example_idxs,
    )
    if args.json:
        emit_json(model)
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
    client = client_from_args(args)
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
    path = client_from_args(args).download_model(
        args.model_id, target, torchscript=args.torchscript
    )
    print(f"saved {path} ({path.stat().st_size} bytes)")
    return 0


def add_model_commands(models: argparse.ArgumentParser) -> None:
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
