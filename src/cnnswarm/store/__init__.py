"""Durable state: the job store (database) and the artifact store (files under HOME_DIR)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from cnnswarm.store.artifacts import ArtifactStore
from cnnswarm.store.catalog import Catalog
from cnnswarm.store.db import create_schema, make_engine
from cnnswarm.store.gangs import GangStore
from cnnswarm.store.jobs import JobStore
from cnnswarm.store.leader import LeaderLease
from cnnswarm.store.sweeps import SweepStore
from cnnswarm.store.trainers import TrainerRegistry


@dataclass
class Stores:
    """Everything a controller persists, opened together."""

    engine: Engine
    jobs: JobStore
    catalog: Catalog
    trainers: TrainerRegistry
    leader: LeaderLease
    artifacts: ArtifactStore
    gangs: GangStore
    sweeps: SweepStore

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()


def open_stores(database_url: str, home_dir: str | object) -> Stores:
    """Open (and create if needed) the database at ``database_url`` and the files under
    ``home_dir``."""
    from pathlib import Path

    artifacts = ArtifactStore(Path(str(home_dir)))
    engine = make_engine(database_url)
    create_schema(engine)
    return Stores(
        engine=engine,
        jobs=JobStore(engine),
        catalog=Catalog(engine),
        trainers=TrainerRegistry(engine),
        leader=LeaderLease(engine),
        artifacts=artifacts,
        gangs=GangStore(engine),
        sweeps=SweepStore(engine),
    )
