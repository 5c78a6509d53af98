"""Where a postgres target's backups come from: one RecoverySource per kind of source.

A source finds the recovery point a target's rule asks for and restores it into the drill's
throwaway cluster (or beside it, on the same private socket). The provider only dispatches on the
target's `source`: adding a kind of backup (dump files, pgBackRest, Barman, a WAL archive) is a
new RecoverySource and one line in `source_of`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from drdrill.core.models import DrillContext, RecoveryPoint, RestoredResource
from drdrill.providers.postgres.schema import PostgresTarget
from drdrill.localpg.cluster import LocalCluster


class RecoverySource(ABC):
    """One kind of backup a postgres target can be recovered from. drdrill only ever reads it."""

    @abstractmethod
    def find(self, ctx: DrillContext, target: PostgresTarget) -> RecoveryPoint:
        """The recovery point `target.recovery_point` asks for (`select_for_target` for backups)."""

    @abstractmethod
    def restore(self, ctx: DrillContext, target: PostgresTarget, point: RecoveryPoint, cluster: LocalCluster) -> RestoredResource:
        """Restore `point` into (or beside) `cluster`, idempotently: a retried attempt starts over."""
