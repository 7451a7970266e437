"""Moved to :mod:`airflow_provider_walthrottle.wal.archiver_status`; this name stays for one release.

Import from :mod:`airflow_provider_walthrottle.wal.archiver_status` instead.
"""

from __future__ import annotations

from airflow_provider_walthrottle.wal.archiver_status import (
    ArchiverStatus as ArchiverStatus,
)
from airflow_provider_walthrottle.wal.archiver_status import (
    BacklogMethod as BacklogMethod,
)
from airflow_provider_walthrottle.wal.archiver_status import (
    ServerArchiverState as ServerArchiverState,
)
from airflow_provider_walthrottle.wal.archiver_status import (
    archiving_applies as archiving_applies,
)
from airflow_provider_walthrottle.wal.archiver_status import (
    build_archiver_status as build_archiver_status,
)
from airflow_provider_walthrottle.wal.archiver_status import (
    estimate_pending_segments as estimate_pending_segments,
)
from airflow_provider_walthrottle.wal.archiver_status import (
    is_archiver_failing as is_archiver_failing,
)
