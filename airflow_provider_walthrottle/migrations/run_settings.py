"""How the batches of a migration run: the settings a caller gives :func:`~.runner.run_one_batch`.

Plain data, checked when it is made; the operator builds it from its arguments, the benchmarks and
tests directly. It is importable from :mod:`~airflow_provider_walthrottle.migrations.runner` too,
where it was defined before 0.2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from airflow_provider_walthrottle.migrations.definition import whole_number
from airflow_provider_walthrottle.migrations.optimizer import BatchSizePolicy
from airflow_provider_walthrottle.migrations.pacing import (
    DEFAULT_MAX_PAUSE_SECONDS,
    DEFAULT_TARGET_STATEMENT_SECONDS,
)


@dataclass(frozen=True)
class RunSettings:
    """How batches run.

    :param sub_batch_size: keys per ``batch_sql`` statement; ``None`` (the default) sizes each
        statement to last ``target_statement_seconds``
        (:class:`~airflow_provider_walthrottle.migrations.pacing.StatementSizer`).
    :param pause_ms: milliseconds to sleep between sub-batches; ``None`` (the default) pauses as the
        health signals ask: not at all while every reading is at most half its threshold
        (:func:`~airflow_provider_walthrottle.migrations.pacing.signal_pause`).
    :param max_attempts: attempts of a job before the migration fails, as in GitLab (3). Only an
        error raised by the batch's own SQL ends an attempt: a job whose worker or connection was
        lost is taken over where it stopped, on the same attempt.
    :param split_after_attempts: after this many timed-out attempts, a job's range is split in two.
    :param statement_timeout_ms: ``statement_timeout`` for each sub-batch; ``None`` or 0 for none.
    :param max_pending_segments: the WAL threshold, for the batch-size optimizer.
    :param policy: bounds and time target of the batch size.
    :param recheck_seconds: between sub-batches, the backlog check is skipped while the last count
        plus the WAL written since cannot exceed the threshold (see
        :func:`~airflow_provider_walthrottle.migrations.optimizer.backlog_bound`), but for no longer
        than this (see
        :meth:`~airflow_provider_walthrottle.migrations.verdict.HealthVerdict.recheck_due`); 0 checks
        between every two sub-batches. The check before a batch always runs.
    :param target_statement_seconds: the duration a statement aims at without ``sub_batch_size``.
    :param max_pause_seconds: the longest pause the signals ask for without ``pause_ms``.
    :param share_wal_budget: share one WAL headroom with the other batches on the database (see
        :mod:`~airflow_provider_walthrottle.migrations.wal_budget`); ``False`` sizes each batch to all
        of it, as before 0.2.
    """

    sub_batch_size: int | None = None
    pause_ms: int | None = None
    max_attempts: int = 3
    split_after_attempts: int = 2
    statement_timeout_ms: int | None = None
    max_pending_segments: int = 42
    policy: BatchSizePolicy = field(default_factory=BatchSizePolicy)
    recheck_seconds: float = 1.0
    target_statement_seconds: float = DEFAULT_TARGET_STATEMENT_SECONDS
    max_pause_seconds: float = DEFAULT_MAX_PAUSE_SECONDS
    share_wal_budget: bool = True

    def __post_init__(self) -> None:
        if self.sub_batch_size is not None:
            whole_number("sub_batch_size", self.sub_batch_size, minimum=1, unit="rows")
        if self.pause_ms is not None:
            whole_number("pause_ms", self.pause_ms, minimum=0, unit="milliseconds")
        whole_number("max_attempts", self.max_attempts, minimum=1, unit="attempts")
        whole_number("split_after_attempts", self.split_after_attempts, minimum=1, unit="attempts")
        if self.statement_timeout_ms is not None:
            whole_number("statement_timeout_ms", self.statement_timeout_ms, minimum=0, unit="milliseconds")
