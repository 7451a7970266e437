"""The WAL side of the provider: everything about WAL segments and the archiver, as the
``migrations`` package is everything about batching.

- :mod:`~airflow_provider_walthrottle.wal.segments`: WAL file names and LSN arithmetic (plain Python);
- :mod:`~airflow_provider_walthrottle.wal.archiver_status`: the archiver's state and backlog, and how
  it is estimated;
- :mod:`~airflow_provider_walthrottle.wal.queries`: the SQL that reads them from a server;
- :mod:`~airflow_provider_walthrottle.wal.health`: the health signals a backlog gives migrations.

The names of :mod:`~airflow_provider_walthrottle.wal.segments` are also importable from here, as they
were from the former ``airflow_provider_walthrottle.wal`` module.
"""

from __future__ import annotations

from airflow_provider_walthrottle.wal.segments import (
    WalFileKind as WalFileKind,
)
from airflow_provider_walthrottle.wal.segments import (
    WalFileName as WalFileName,
)
from airflow_provider_walthrottle.wal.segments import (
    parse_lsn as parse_lsn,
)
from airflow_provider_walthrottle.wal.segments import (
    parse_wal_file_name as parse_wal_file_name,
)
from airflow_provider_walthrottle.wal.segments import (
    segment_file_name as segment_file_name,
)
from airflow_provider_walthrottle.wal.segments import (
    segment_of_lsn as segment_of_lsn,
)
from airflow_provider_walthrottle.wal.segments import (
    segments_per_log_id as segments_per_log_id,
)
