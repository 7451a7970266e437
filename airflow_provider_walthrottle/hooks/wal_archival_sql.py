"""Moved to :mod:`airflow_provider_walthrottle.wal.queries`; this name stays for one release.

Import from :mod:`airflow_provider_walthrottle.wal.queries` instead.
"""

from __future__ import annotations

from airflow_provider_walthrottle.wal.queries import (
    ARCHIVER_STATE as ARCHIVER_STATE,
)
from airflow_provider_walthrottle.wal.queries import (
    READY_SEGMENT_COUNT as READY_SEGMENT_COUNT,
)
from airflow_provider_walthrottle.wal.queries import (
    StatusConversation as StatusConversation,
)
from airflow_provider_walthrottle.wal.queries import (
    archiver_status_conversation as archiver_status_conversation,
)
from airflow_provider_walthrottle.wal.queries import (
    read_archiver_status as read_archiver_status,
)
