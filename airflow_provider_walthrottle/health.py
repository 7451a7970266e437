"""Moved to :mod:`airflow_provider_walthrottle.wal.health`; this name stays for one release.

Import from :mod:`airflow_provider_walthrottle.wal.health` instead.
"""

from __future__ import annotations

from airflow_provider_walthrottle.wal.health import (
    DEFAULT_MAX_PENDING_SEGMENTS as DEFAULT_MAX_PENDING_SEGMENTS,
)
from airflow_provider_walthrottle.wal.health import (
    HealthSignal as HealthSignal,
)
from airflow_provider_walthrottle.wal.health import (
    HealthUnavailableError as HealthUnavailableError,
)
from airflow_provider_walthrottle.wal.health import (
    OnUnavailable as OnUnavailable,
)
from airflow_provider_walthrottle.wal.health import (
    Signal as Signal,
)
from airflow_provider_walthrottle.wal.health import (
    evaluate_wal_archival as evaluate_wal_archival,
)
from airflow_provider_walthrottle.wal.health import (
    exact_count_limit as exact_count_limit,
)
from airflow_provider_walthrottle.wal.health import (
    may_proceed as may_proceed,
)
from airflow_provider_walthrottle.wal.health import (
    parse_max_pending_segments as parse_max_pending_segments,
)
