"""Helpers of the API's tests: a real ``facescan-detector serve`` process on a free port
of 127.0.0.1, and plain HTTP to it (http.client: nothing in-process)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "samples"
DETECTOR = Path(sys.executable).parent / "facescan-detector"
FACESCAN = Path(sys.executable).parent / "facescan"
KEYS = ("key-one-7f3a9c", "key-two-51be02")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_env(**extra: str) -> dict[str, str]:
    """Our environment without FACESCAN_*, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESCAN_")}
    env.update(extra)
    return env


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class ApiServer:
    """``facescan-detector serve`` (or ``facescan serve``) in a subprocess; ``stop`` ends it
    with SIGTERM."""

    def __init__(
        self,
        args: Iterable[str],
        env: Mapping[str, str],
        log: Path,
        program: Path = DETECTOR,
        *,
        wait: str = "/health/ready",
    ) -> None:
        self.port = free_port()
        self.log = log
        command = [str(program), "serve", "--port", str(self.port), *args]
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, env=dict(env), stdout=out, stderr=out)
        self.wait_ready(wait)

    def wait_ready(self, path: str = "/health/ready", timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited {self.process.returncode}:\n{self.output()}")
            try:
                if self.request("GET", path, timeout=5).status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready in {timeout_s} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float = 120,
    ) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return Answer(response.status, dict(response.getheaders()), response.read())
        finally:
            conn.close()

    def detect(
        self, data: bytes, *, key: str | None = KEYS[0], filename: str = "photo.jpg"
    ) -> Answer:
        body, content_type = multipart({"image": (filename, data)})
        headers = {"Content-Type": content_type}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return self.request("POST", "/detect", body, headers)

    def metric(self, name: str, key: str | None = KEYS[0]) -> float:
        """The value of an unlabelled metric from /metrics."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        text = self.request("GET", "/metrics", headers=headers, timeout=10).body.decode()
        for line in text.splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics:\n{text}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def multipart(files: Mapping[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart/form-data body of file fields, and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for field, (filename, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"
