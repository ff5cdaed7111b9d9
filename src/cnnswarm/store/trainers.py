"""Trainers as the controllers know them, from their heartbeats."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from cnnswarm.store import db


@dataclass(frozen=True)
class Trainer:
    """A trainer's last heartbeat."""

    id: str
    url: str
    slots: int
    running: list[str]
    first_seen: float
    last_heartbeat: float

    def is_alive(self, timeout_s: float, at: float | None = None) -> bool:
        """Heard from within ``timeout_s``."""
        return (db.now() if at is None else at) - self.last_heartbeat <= timeout_s

    def free_slots(self, running_now: int) -> int:
        """Slots left with ``running_now`` jobs on this trainer (never negative)."""
        return max(0, self.slots - running_now)

    def state(self, timeout_s: float, running_now: int) -> str:
        """``idle`` (a free slot), ``busy``, or ``lost`` (silent for ``timeout_s``)."""
        if not self.is_alive(timeout_s):
            return "lost"
        return "idle" if self.free_slots(running_now) else "busy"

    def to_json(self, timeout_s: float, running_now: int) -> dict[str, Any]:
        """The API's view of a trainer."""
        alive = self.is_alive(timeout_s)
        return {
            "id": self.id,
            "url": self.url,
            "state": self.state(timeout_s, running_now),
            "slots": self.slots,
            "running_jobs": self.running,
            "free_slots": self.free_slots(running_now) if alive else 0,
            "last_heartbeat": self.last_heartbeat,
            "seconds_since_heartbeat": round(db.now() - self.last_heartbeat, 3),
        }


class TrainerRegistry:
    """The trainers that have sent heartbeats. Every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def heartbeat(self, trainer_id: str, url: str, slots: int, running: list[str]) -> None:
        """Record a heartbeat (registering the trainer on its first)."""
        ts = db.now()
        values = {"url": url, "slots": slots, "running": running, "last_heartbeat": ts}
        with self.engine.begin() as conn:
            result = conn.execute(
                update(db.trainers).where(db.trainers.c.id == trainer_id).values(**values)
            )
            if result.rowcount == 0:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(db.trainers).values(id=trainer_id, first_seen=ts, **values)
                        )
                except IntegrityError:
                    conn.execute(
                        update(db.trainers).where(db.trainers.c.id == trainer_id).values(**values)
                    )

    def get(self, trainer_id: str) -> Trainer | None:
        """A trainer by id, or None."""
        with self.engine.begin() as conn:
            row = conn.execute(select(db.trainers).where(db.trainers.c.id == trainer_id)).first()
        return None if row is None else Trainer(**dict(row._mapping))

    def all(self) -> list[Trainer]:
        """All known trainers, most recently seen first."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(db.trainers).order_by(db.trainers.c.last_heartbeat.desc())
            ).all()
        return [Trainer(**dict(r._mapping)) for r in rows]

    def alive(self, timeout_s: float) -> list[Trainer]:
        """Trainers heard from within ``timeout_s``."""
        return [t for t in self.all() if t.is_alive(timeout_s)]

    def forget_older_than(self, age_s: float) -> int:
        """Drop trainers silent for ``age_s`` (they restarted under a new id or left)."""
        with self.engine.begin() as conn:
            result = conn.execute(
                delete(db.trainers).where(db.trainers.c.last_heartbeat < db.now() - age_s)
            )
        return int(result.rowcount)
