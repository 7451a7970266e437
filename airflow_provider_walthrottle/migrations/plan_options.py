"""The arguments of a plan that say how the migration will run: its threshold, batches and schedule.

:func:`~airflow_provider_walthrottle.migrations.plan.compute_plan` takes, beside the definition,
what the operator's own arguments decide: the threshold, the first batch, the optimizer's bounds and
time target, the sub-batch, and the DAG's interval. :class:`PlanOptions` holds them, once, so that
the operator's
:meth:`~airflow_provider_walthrottle.operators.batched_migration.BatchedMigrationOperator.plan`,
its first run and a benchmark plan with the arguments the migration runs with. The Airflow side
(:mod:`~airflow_provider_walthrottle.migration_plan`) reads them from an operator and its DAG.

Plain Python, with no Airflow import.

.. seealso:: :doc:`/howto/plan`
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from airflow_provider_walthrottle.migrations.plan import (
    DEFAULT_FIRST_BATCH,
    DEFAULT_MIN_BATCH_SIZE,
    DEFAULT_TARGET_BATCH_SECONDS,
)
from airflow_provider_walthrottle.wal.health import DEFAULT_MAX_PENDING_SEGMENTS

if TYPE_CHECKING:
    from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy


@dataclass(frozen=True)
class PlanOptions:
    """How a migration will run, as :func:`~airflow_provider_walthrottle.migrations.plan.compute_plan`
    takes it.

    :param max_pending_segments: the WAL threshold.
    :param first_batch_size: the first batch (the operator's ``batch_size``).
    :param min_batch_size: the optimizer's smallest batch.
    :param max_batch_size: its largest; ``None`` for none.
    :param target_batch_seconds: the duration it aims a batch at.
    :param sub_batch_size: keys per statement, if fixed: then the sample's ranges are of that many
        keys, as the migration's statements will be; ``None`` keeps the plan's default.
    :param interval_seconds: the DAG's interval between two runs; ``None`` for back to back.
    """

    max_pending_segments: int = DEFAULT_MAX_PENDING_SEGMENTS
    first_batch_size: int = DEFAULT_FIRST_BATCH
    min_batch_size: int = DEFAULT_MIN_BATCH_SIZE
    max_batch_size: int | None = None
    target_batch_seconds: float = DEFAULT_TARGET_BATCH_SECONDS
    sub_batch_size: int | None = None
    interval_seconds: float | None = None

    @classmethod
    def for_run(
        cls,
        *,
        max_pending_segments: int,
        first_batch_size: int,
        policy: BatchSizePolicy,
        sub_batch_size: int | None,
        interval_seconds: float | None,
    ) -> PlanOptions:
        """Return the options of a migration that runs with ``policy``, as the operator's does.

        :param max_pending_segments: the WAL threshold.
        :param first_batch_size: the first batch.
        :param policy: the optimizer's bounds and time target.
        :param sub_batch_size: keys per statement, if fixed.
        :param interval_seconds: the DAG's interval; ``None`` for back to back.
        """
        return cls(
            max_pending_segments=max_pending_segments,
            first_batch_size=first_batch_size,
            min_batch_size=policy.min_batch_size,
            max_batch_size=policy.max_batch_size,
            target_batch_seconds=policy.target_batch_seconds,
            sub_batch_size=sub_batch_size,
            interval_seconds=interval_seconds,
        )

    def arguments(self) -> dict[str, Any]:
        """Return :func:`~airflow_provider_walthrottle.migrations.plan.compute_plan`'s keyword arguments."""
        arguments: dict[str, Any] = {
            "max_pending_segments": self.max_pending_segments,
            "first_batch_size": self.first_batch_size,
            "min_batch_size": self.min_batch_size,
            "max_batch_size": self.max_batch_size,
            "target_batch_seconds": self.target_batch_seconds,
            "interval_seconds": self.interval_seconds,
        }
        if self.sub_batch_size is not None:
            arguments["sample_keys"] = self.sub_batch_size
        return arguments
