"""What every benchmark shares: a throwaway PostgreSQL, a table to migrate, the machine, a table printer.

The benchmarks use the test suite's harness (``tests/support/postgres_cluster.py``): a real PostgreSQL 15
cluster made with ``initdb`` and started with ``pg_ctl`` as the ``postgres`` user, with
``archive_mode=on`` and an ``archive_command`` the benchmark controls. :func:`bench_cluster` sets
one up and always tears it down, whatever happens in between::

    with bench_cluster("check-cost") as cluster:
        cluster.make_backlog(10)
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from psycopg import sql  # noqa: E402

import tests.support.airflow_env  # noqa: E402, F401  (a private AIRFLOW_HOME before Airflow is imported)
from tests.support.postgres_cluster import (  # noqa: E402
    PostgresCluster,
    find_binary,
    make_base_dir,
    remove_base_dir,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


@contextlib.contextmanager
def bench_cluster(
    name: str,
    *,
    wal_segsize_mb: int = 16,
    extra_conf: dict[str, str] | None = None,
    archive_delay_seconds: float = 0.0,
    archive_mode: str = "on",
) -> Iterator[PostgresCluster]:
    """Start a throwaway cluster in a temporary directory; stop it and remove the directory after.

    :param name: the cluster's name (and directory).
    :param wal_segsize_mb: ``initdb --wal-segsize``, in MB.
    :param extra_conf: server settings on top of the harness's.
    :param archive_delay_seconds: seconds ``archive_command`` sleeps before each copy.
    :param archive_mode: ``archive_mode``; ``"off"`` for a cluster that only holds Airflow's metadata.
    """
    base = make_base_dir("walthrottle-bench-")
    cluster: PostgresCluster | None = None
    try:
        cluster = PostgresCluster.create(
            base,
            name=name,
            wal_segsize_mb=wal_segsize_mb,
            extra_conf=extra_conf,
            archive_delay_seconds=archive_delay_seconds,
            archive_mode=archive_mode,
        )
        cluster.start()
        yield cluster
    finally:
        if cluster is not None:
            cluster.close()
        remove_base_dir(base)


def make_items_table(cluster: PostgresCluster, name: str, rows: int, *, payload_bytes: int = 32) -> None:
    """Create ``name (id bigint PRIMARY KEY, payload text, migrated bool)`` with ids 1 to ``rows``.

    :param cluster: the cluster.
    :param name: the table's name.
    :param rows: how many rows.
    :param payload_bytes: the payload's length (hex digits of md5, repeated).
    """
    table = sql.Identifier(name)
    repeat = max(1, -(-payload_bytes // 32))
    cluster.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    cluster.execute(
        sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, payload text NOT NULL, migrated bool)").format(table)
    )
    cluster.execute(
        sql.SQL(
            "INSERT INTO {} SELECT i, left(repeat(md5(i::text), %s), %s), NULL FROM generate_series(1, %s) i"
        ).format(table),
        [repeat, payload_bytes, rows],
    )
    cluster.execute(sql.SQL("VACUUM ANALYZE {}").format(table))


def copy_items_table(cluster: PostgresCluster, source: str, name: str) -> None:
    """Make ``name`` a fresh copy of ``source`` (same rows, same physical layout, own index).

    :param cluster: the cluster.
    :param source: a table made by :func:`make_items_table`.
    :param name: the copy.
    """
    table = sql.Identifier(name)
    cluster.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    cluster.execute(
        sql.SQL("CREATE TABLE {} AS SELECT * FROM {} ORDER BY id").format(table, sql.Identifier(source))
    )
    cluster.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (id)").format(table))
    cluster.execute(sql.SQL("VACUUM ANALYZE {}").format(table))


def make_docs_table(
    cluster: PostgresCluster, name: str, rows: int, *, body_bytes: tuple[int, int] = (2048, 6144)
) -> None:
    """Create a wide table with a TOASTed column, ids 1 to ``rows``.

    ``name (id bigint PRIMARY KEY, created_at timestamptz, author text, title text, status int,
    body text, migrated bool)``. Each ``body`` is hex digits of md5s, between ``body_bytes[0]`` and
    ``body_bytes[1]`` long, the length varying from row to row independently of ``id``: pglz cannot
    shrink hex digits by a quarter, so every body is stored uncompressed, out of line, in the TOAST
    table (in chunks of about 2 kB).

    :param cluster: the cluster.
    :param name: the table's name.
    :param rows: how many rows.
    :param body_bytes: the shortest and the longest body, in bytes (multiples of 32).
    """
    table = sql.Identifier(name)
    shortest, longest = (max(1, size // 32) for size in body_bytes)
    cluster.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    cluster.execute(
        sql.SQL(
            "CREATE TABLE {} (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, author text NOT NULL,"
            " title text NOT NULL, status int NOT NULL, body text NOT NULL, migrated bool)"
        ).format(table)
    )
    cluster.execute(
        sql.SQL(
            "INSERT INTO {} SELECT i, timestamptz '2020-01-01' + i * interval '1 minute',"
            " 'author ' || i %% 997, 'title ' || md5(i::text), i %% 7,"
            " (SELECT string_agg(md5(i::text || '/' || j::text), '') FROM generate_series(1,"
            "  %(shortest)s + abs(hashint8(i)) %% (%(longest)s - %(shortest)s + 1)) AS j), NULL"
            " FROM generate_series(1, %(rows)s) AS i"
        ).format(table),
        {"shortest": shortest, "longest": longest, "rows": rows},
    )
    cluster.execute(sql.SQL("VACUUM ANALYZE {}").format(table))


def make_scores_table(cluster: PostgresCluster, name: str, rows: int) -> None:
    """Create ``name (id bigint PRIMARY KEY, score int, payload text)`` with two indexes on ``score``.

    ``score`` is a hash of ``id`` (so its order is not the key's), indexed by ``(score)`` and by
    ``(score, id)``: an update of ``score`` can never be HOT, and each one inserts an entry into
    both indexes at a place of its own, besides the key's index.

    :param cluster: the cluster.
    :param name: the table's name.
    :param rows: how many rows, ids 1 to ``rows``.
    """
    table = sql.Identifier(name)
    cluster.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    cluster.execute(
        sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, score int NOT NULL, payload text NOT NULL)").format(
            table
        )
    )
    cluster.execute(
        sql.SQL(
            "INSERT INTO {} SELECT i, abs(hashint8(i)) %% 1000000000, md5(i::text)"
            " FROM generate_series(1, %s) AS i"
        ).format(table),
        [rows],
    )
    cluster.execute(sql.SQL("CREATE INDEX {} ON {} (score)").format(sql.Identifier(f"{name}_score"), table))
    cluster.execute(
        sql.SQL("CREATE INDEX {} ON {} (score, id)").format(sql.Identifier(f"{name}_score_id"), table)
    )
    cluster.execute(sql.SQL("VACUUM ANALYZE {}").format(table))


def update_sql(table: str) -> str:
    """Return the benchmark migration's ``batch_sql`` for ``table``, as text.

    :param table: a table made by :func:`make_items_table`.
    """
    return (
        sql.SQL("UPDATE {} SET migrated = true WHERE id BETWEEN %(start)s AND %(end)s")
        .format(sql.Identifier(table))
        .as_string()
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return None


def machine() -> dict[str, Any]:
    """Describe this machine and the software the benchmarks ran on."""
    import importlib.metadata

    postgres = subprocess.run(
        [find_binary("postgres"), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    memory = _memory_gib()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1) if memory is not None else None,
        "os": f"{platform.system()} {platform.release()}",
        "postgres": postgres.removeprefix("postgres (PostgreSQL) ") or "unknown",
        "python": platform.python_version(),
        "airflow": importlib.metadata.version("apache-airflow-core"),
        "psycopg": importlib.metadata.version("psycopg"),
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str) -> str:
    """Return a Markdown table.

    :param header: column titles.
    :param rows: cells, already formatted (anything ``str()`` reads well).
    :param align: one letter a column: ``l`` (left) or ``r`` (right).
    """
    marks = {"l": "---", "r": "---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` (the ``--json`` option every benchmark has), if given.

    :param path: a file name, or ``None`` to write nothing.
    :param data: JSON-ready results.
    """
    if path:
        Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
