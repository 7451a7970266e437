"""A TCP server that accepts every connection and never sends a byte: a PostgreSQL that does not answer.

It is what a client sees when a server hangs after ``accept()`` (a stuck postmaster, a proxy whose
backend is gone, a host under a memory storm): the TCP handshake succeeds, then nothing. Without a
connect timeout, libpq waits for the server's first message forever::

    with SilentServer() as server:
        dsn = f"postgresql://u:p@127.0.0.1:{server.port}/db"

It binds 127.0.0.1 on a free port and holds every accepted socket open until it is closed. Run it as
a script (``python -m tests.support.silent_server [PORT]``) to try the provider by hand.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["SilentServer"]


class SilentServer:
    """Accept TCP connections on 127.0.0.1 and never answer them.

    :param port: the port to bind; a free one by default.
    """

    def __init__(self, port: int = 0) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(256)
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self.host = "127.0.0.1"
        self._accepted: list[socket.socket] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"silent-server-{self.port}", daemon=True)
        self._thread.start()

    @property
    def accepted(self) -> int:
        """How many connections it has accepted so far."""
        return len(self._accepted)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self._accepted.append(client)  # held open, never read from or written to

    def close(self) -> None:
        """Stop accepting and close every connection it holds."""
        self._stopped.set()
        self._thread.join(timeout=5)
        self._listener.close()
        for client in self._accepted:
            with contextlib.suppress(OSError):
                client.close()

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


if __name__ == "__main__":
    with SilentServer(int(sys.argv[1]) if len(sys.argv) > 1 else 0) as server:
        print(f"accepting on 127.0.0.1:{server.port} and never answering; Ctrl-C stops", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
