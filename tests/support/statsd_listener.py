"""A StatsD server for tests: a UDP socket on 127.0.0.1 that keeps every line it receives."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType


class StatsdListener:
    """Collect StatsD lines (``name:value|type``) sent to :attr:`port` until :meth:`close`."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port: int = self._socket.getsockname()[1]
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="statsd-listener", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._closed.is_set():
            try:
                packet = self._socket.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._lines.extend(line for line in packet.decode(errors="replace").splitlines() if line)

    def lines(self, prefix: str = "") -> list[str]:
        """Return the lines received so far whose metric name starts with ``prefix``."""
        with self._lock:
            return [line for line in self._lines if line.startswith(prefix)]

    def wait_for(
        self, predicate: Callable[[list[str]], bool], *, prefix: str = "", timeout: float = 30
    ) -> list[str]:
        """Wait until ``predicate(lines(prefix))`` holds; return those lines.

        :raises AssertionError: after ``timeout`` seconds, with what was received.
        """
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines(prefix)
            if predicate(lines):
                return lines
            if time.monotonic() > deadline:
                raise AssertionError(f"StatsD lines {prefix!r}* never matched; received: {lines[-30:]}")
            time.sleep(0.1)

    def close(self) -> None:
        """Stop receiving and close the socket."""
        self._closed.set()
        self._thread.join(timeout=5)
        self._socket.close()

    def __enter__(self) -> StatsdListener:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
