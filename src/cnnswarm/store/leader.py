"""The scheduler's leader lease: exactly one controller schedules at a time.

The lease is one row (``leader``) naming its holder and when it expires. A holder renews it
every round; a controller that dies stops renewing, and another takes the row over once it
has expired. Taking and renewing are one compare-and-set, so two controllers never both hold
an unexpired lease.
"""

from __future__ import annotations

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from cnnswarm.store import db

LEADER_NAME = "scheduler"


class LeaderLease:
    """The scheduler lease in the database. Every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def try_lead(self, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease for ``ttl_s``; True while ``holder`` is the leader."""
        ts = db.now()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(db.leader)
                .where(
                    db.leader.c.name == LEADER_NAME,
                    (db.leader.c.holder == holder) | (db.leader.c.expires_at < ts),
                )
                .values(holder=holder, expires_at=ts + ttl_s)
            )
            if result.rowcount == 1:
                return True
            exists = conn.execute(
                select(db.leader.c.holder).where(db.leader.c.name == LEADER_NAME)
            ).first()
            if exists is not None:
                return False
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(db.leader).values(
                            name=LEADER_NAME, holder=holder, expires_at=ts + ttl_s
                        )
                    )
            except IntegrityError:
                return False
        return True

    def holder(self) -> str | None:
        """Who holds an unexpired lease now; None when nobody does."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(db.leader.c.holder).where(
                    db.leader.c.name == LEADER_NAME, db.leader.c.expires_at >= db.now()
                )
            ).scalar_one_or_none()

    def resign(self, holder: str) -> None:
        """Give up the lease at once (clean shutdown), so another controller takes over."""
        with self.engine.begin() as conn:
            conn.execute(
                update(db.leader)
                .where(db.leader.c.name == LEADER_NAME, db.leader.c.holder == holder)
                .values(expires_at=0.0)
            )
