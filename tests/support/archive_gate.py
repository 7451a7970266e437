"""Threads that open a cluster's archive gate while a test waits: after some checks, or as a watchdog."""

from __future__ import annotations

import threading


class GateOpener(threading.Thread):
    """Open the archive gate once the sensor has checked the backlog ``checks`` times.

    The sensor's connection uses a database of its own, so its checks can be counted in
    ``pg_stat_database.sessions``: one session per check.
    """

    def __init__(self, cluster, dbname, checks):
        super().__init__(daemon=True)
        self.cluster, self.dbname, self.checks = cluster, dbname, checks
        self.sessions_before = self.sessions()
        self.opened = threading.Event()
        self.stop = threading.Event()

    def sessions(self):
        self.cluster.execute("SELECT pg_stat_clear_snapshot()")
        rows = self.cluster.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", [self.dbname])
        return rows[0][0] if rows else 0

    def run(self):
        while not self.stop.wait(0.1):
            if self.sessions() - self.sessions_before >= self.checks:
                self.cluster.open_gate()
                self.opened.set()
                return


class Watchdog(threading.Thread):
    """Open the archive gate if the test is still running after ``seconds``.

    A wait that ignores its timeout would otherwise wait forever; once the gate opens it ends, and
    the test's assertions report what went wrong.
    """

    def __init__(self, cluster, seconds=120):
        super().__init__(daemon=True)
        self.cluster, self.seconds = cluster, seconds
        self.done = threading.Event()
        self.fired = False

    def run(self):
        if not self.done.wait(self.seconds):
            self.fired = True
            self.cluster.open_gate()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc_info):
        self.done.set()
        self.join()
