"""The main job, for now: `walthrottle status` on a throwaway PostgreSQL with a gated archiver.

Run by ``./dev demo``. It starts a private PostgreSQL 15 cluster with ``archive_mode=on`` and an
``archive_command`` that fails while a gate file exists, piles up 50 WAL segments (above the
threshold of 42), shows what the provider sees (exactly, and by LSN arithmetic for a role without
``pg_monitor``), opens the gate, and shows the backlog drain. Everything it started is stopped at
the end, or on Ctrl-C. ``--hold`` keeps the cluster running until Ctrl-C so you can try commands.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.postgres_cluster import (
    PostgresCluster,
    make_base_dir,
    remove_base_dir,
    stop_all_clusters,
)

WALTHROTTLE = str(Path(sys.executable).parent / "walthrottle")


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def run_status(dsn: str, *extra: str, shown_as: str) -> int:
    """Run the real command line, echoing it with the password hidden."""
    print(f"$ walthrottle status {shown_as} {' '.join(extra)}".rstrip(), flush=True)
    result = subprocess.run([WALTHROTTLE, "status", dsn, *extra], check=False)
    print(f"(exit code {result.returncode})", flush=True)
    return result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", action="store_true", help="keep the cluster running until Ctrl-C")
    parser.add_argument("--backlog", type=int, default=50, help="segments to pile up (default 50)")
    args = parser.parse_args()

    base = make_base_dir("walthrottle-demo-")
    try:
        say("starting a throwaway PostgreSQL with archive_mode=on and a gated archive_command")
        started = time.monotonic()
        cluster = PostgresCluster.create(base, name="demo")
        cluster.start()
        cluster.create_role("walthrottle_monitor", "monitor-pw", pg_monitor=True)
        cluster.create_role("app_reader", "reader-pw", pg_monitor=False)
        monitor = cluster.uri(user="walthrottle_monitor", password="monitor-pw")
        reader = cluster.uri(user="app_reader", password="reader-pw")
        print(
            f"data directory {cluster.data_dir}, port {cluster.port}, "
            f"ready in {time.monotonic() - started:.1f}s"
        )

        say("archiving one segment, so the LSN method has a starting point")
        cluster.archive_one_segment()
        run_status(monitor, shown_as="postgresql://walthrottle_monitor@…")

        say(f"closing the archive gate and writing {args.backlog} segments of WAL")
        cluster.make_backlog(args.backlog)
        print(f"{len(cluster.ready_segments())} .ready files in {cluster.data_dir}/pg_wal/archive_status")
        run_status(monitor, shown_as="postgresql://walthrottle_monitor@…")

        say("the same, as a role without pg_monitor (LSN arithmetic), as JSON")
        run_status(reader, "--json", shown_as="postgresql://app_reader@…")

        say("opening the gate: the archiver catches up")
        drain_started = time.monotonic()
        cluster.drain()
        print(f"drained in {time.monotonic() - drain_started:.1f}s")
        run_status(monitor, shown_as="postgresql://walthrottle_monitor@…")

        say("next")
        print(
            "In Airflow, WalArchivalSensor makes this same check behind the feature flag:\n"
            "  airflow variables set batched_migrations_health_status_wal true    # roll out\n"
            "  airflow variables set batched_migrations_health_status_wal false   # roll back"
        )
        if args.hold:
            cluster.close_gate()
            say(f"holding: the cluster runs until Ctrl-C (gate closed; open it with: rm {cluster.gate_path})")
            print(f"  {WALTHROTTLE} status {shlex.quote(monitor)}")
            while True:
                time.sleep(3600)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        return 130
    finally:
        say("stopping everything the demo started")
        stop_all_clusters()
        remove_base_dir(base)


if __name__ == "__main__":
    sys.exit(main())
