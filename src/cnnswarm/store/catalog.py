"""Models, aliases and uploaded datasets in the database.

A model row is built by ``model_row`` and written by ``insert_model`` only: by
``JobStore.complete`` in the same transaction that marks its job succeeded, or by
``Catalog.add_model`` for an imported file, which reserves the id in the same transaction (so
an import and a job never publish under one id). This module also reads, names and deletes
them. Aliases resolve anywhere a model id is taken.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from cnnswarm.errors import Conflict, NotFound
from cnnswarm.store import db


def model_row(
    model_id: str,
    *,
    job_id: str | None,
    model_type: str,
    dataset: str,
    classes: list[str],
    metrics: list[dict[str, Any]],
    train_opts: dict[str, Any],
    example_idxs: list[int] | None,
    preprocessing: dict[str, Any],
    filename: str,
) -> dict[str, Any]:
    """A ``models`` row (``job_id`` None for an imported model; ``filename`` relative to
    ``HOME_DIR``)."""
    return {
        "id": model_id,
        "job_id": job_id,
        "model_type": model_type,
        "dataset": dataset,
        "classes": classes,
        "metrics": metrics,
        "train_opts": train_opts,
        "example_idxs": example_idxs,
        "preprocessing": preprocessing,
        "filename": filename,
    }


def insert_model(conn: Connection, row: Mapping[str, Any], created_at: float) -> None:
    """Write a ``model_row`` in the caller's transaction (the one place a model row is
    inserted)."""
    conn.execute(insert(db.models).values(**row, created_at=created_at))


def model_to_json(row: Mapping[str, Any], aliases: list[str] | None = None) -> dict[str, Any]:
    """The API's view of a model (the one place a model becomes JSON)."""
    return {
        "id": row["id"],
        "model_id": row["id"],
        "job_id": row["job_id"],
        "model_type": row["model_type"],
        "dataset": row["dataset"],
        "classes": row["classes"],
        "metrics": row["metrics"],
        "train_opts": row["train_opts"],
        "example_idxs": row["example_idxs"],
        "preprocessing": row["preprocessing"],
        "created": row["created_at"],
        "aliases": aliases or [],
    }


def dataset_to_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """The API's view of an uploaded dataset."""
    return {
        "id": row["id"],
        "name": row["name"],
        "builtin": False,
        "classes": row["classes"],
        "num_classes": len(row["classes"]),
        "num_train": row["num_train"],
        "num_test": row["num_test"],
        "shape": row["shape"],
        "created": row["created_at"],
    }


class Catalog:
    """Models, aliases and datasets. Every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- models ---------------------------------------------------------------------------

    def resolve(self, id_or_alias: str) -> str:
        """The model id that ``id_or_alias`` names, or ``NotFound``."""
        with self.engine.begin() as conn:
            row = conn.execute(select(db.models.c.id).where(db.models.c.id == id_or_alias)).first()
            if row is not None:
                return str(row.id)
            alias = conn.execute(
                select(db.aliases.c.model_id).where(db.aliases.c.alias == id_or_alias)
            ).first()
        if alias is None:
            raise NotFound(f"no model or alias named {id_or_alias!r}", field="model_id")
        return str(alias.model_id)

    def get_model(self, id_or_alias: str) -> Mapping[str, Any]:
        """The model row (by id or alias), or ``NotFound``."""
        model_id = self.resolve(id_or_alias)
        with self.engine.begin() as conn:
            row = conn.execute(select(db.models).where(db.models.c.id == model_id)).first()
        if row is None:
            raise NotFound(f"alias {id_or_alias!r} points to deleted model {model_id!r}")
        return dict(row._mapping)

    def check_model_id_free(self, model_id: str) -> None:
        """``Conflict`` when ``model_id`` is a model's, a live job's or an alias; a cheap early
        answer (``add_model`` is what enforces it)."""
        with self.engine.begin() as conn:
            taken = conn.execute(
                select(db.model_ids.c.model_id).where(db.model_ids.c.model_id == model_id)
            ).first()
            alias = conn.execute(
                select(db.aliases.c.alias).where(db.aliases.c.alias == model_id)
            ).first()
        if taken is not None:
            raise model_id_taken(model_id)
        if alias is not None:
            raise Conflict(
                f"{model_id!r} is an alias; a model id cannot shadow it", field="model_id"
            )

    def add_model(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """Reserve the row's id and insert the row (an imported model) in one transaction;
        ``Conflict`` when the id is already used by a model or a job."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(db.model_ids).values(model_id=row["id"], job_id=None))
                insert_model(conn, row, db.now())
        except IntegrityError:
            raise model_id_taken(str(row["id"])) from None
        return self.get_model(str(row["id"]))

    def list_models(self) -> list[Mapping[str, Any]]:
        """All models, oldest first."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(db.models).order_by(db.models.c.created_at)).all()
        return [dict(r._mapping) for r in rows]

    def aliases_of(self) -> dict[str, list[str]]:
        """model id -> its aliases."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(db.aliases.c.alias, db.aliases.c.model_id)).all()
        result: dict[str, list[str]] = {}
        for alias, model_id in rows:
            result.setdefault(str(model_id), []).append(str(alias))
        return result

    def delete_model(self, id_or_alias: str) -> Mapping[str, Any]:
        """Delete a model, its aliases and its id reservation; returns the deleted row."""
        row = self.get_model(id_or_alias)
        with self.engine.begin() as conn:
            conn.execute(delete(db.models).where(db.models.c.id == row["id"]))
            conn.execute(delete(db.aliases).where(db.aliases.c.model_id == row["id"]))
            conn.execute(delete(db.model_ids).where(db.model_ids.c.model_id == row["id"]))
        return row

    def set_alias(self, alias: str, model_id: str) -> None:
        """Point ``alias`` at ``model_id`` (which must exist and not be an alias name itself)."""
        target = self.get_model(model_id)["id"]
        with self.engine.begin() as conn:
            clash = conn.execute(select(db.models.c.id).where(db.models.c.id == alias)).first()
            if clash is not None:
                raise Conflict(f"{alias!r} is a model id; an alias cannot shadow it", field="alias")
            result = conn.execute(
                update(db.aliases)
                .where(db.aliases.c.alias == alias)
                .values(model_id=target, updated_at=db.now())
            )
            if result.rowcount == 0:
                try:
                    conn.execute(
                        insert(db.aliases).values(alias=alias, model_id=target, updated_at=db.now())
                    )
                except IntegrityError:
                    raise Conflict(f"alias {alias!r} was set concurrently; retry") from None

    # -- datasets -------------------------------------------------------------------------

    def add_dataset(self, row: Mapping[str, Any]) -> Mapping[str, Any]:
        """Insert an uploaded dataset's record."""
        with self.engine.begin() as conn:
            conn.execute(insert(db.datasets).values(**row, created_at=db.now()))
        return self.get_dataset(str(row["id"]))

    def get_dataset(self, dataset_id: str) -> Mapping[str, Any]:
        """An uploaded dataset's record, or ``NotFound``."""
        with self.engine.begin() as conn:
            row = conn.execute(select(db.datasets).where(db.datasets.c.id == dataset_id)).first()
        if row is None:
            raise NotFound(f"no dataset with id {dataset_id!r}", field="dataset")
        return dict(row._mapping)

    def list_datasets(self) -> list[Mapping[str, Any]]:
        """Uploaded datasets, oldest first."""
        with self.engine.begin() as conn:
            rows = conn.execute(select(db.datasets).order_by(db.datasets.c.created_at)).all()
        return [dict(r._mapping) for r in rows]

    def delete_dataset(self, dataset_id: str) -> Mapping[str, Any]:
        """Delete an uploaded dataset's record; returns it."""
        row = self.get_dataset(dataset_id)
        with self.engine.begin() as conn:
            conn.execute(delete(db.datasets).where(db.datasets.c.id == dataset_id))
        return row


def model_id_taken(model_id: str) -> Conflict:
    """The error for a model id already used by a job or a model (submit and import)."""
    return Conflict(
        f"model_id {model_id!r} is already used by another job or model; "
        "choose another id or delete that model",
        field="model_id",
    )
