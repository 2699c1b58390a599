"""A real `ruststash serve` process for end-to-end tests, and the clean environments clients run in."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PROXY_START_TIMEOUT = 30.0
_LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


_LISTEN_PORTS = range(20000, 32768)  # below Linux's ephemeral range (32768-60999): no outgoing socket takes one
_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, for a server a test starts later.

    A port the kernel picks with bind(0) comes from the ephemeral range, where any client's outgoing
    connection (cargo, the proxy's upstream fetches) may take it before the server binds it; that made a
    proxy start fail with "address already in use" in CI. Ports below that range are taken only by
    listeners, and none is handed out twice in one test session.
    """
    rng = random.Random()
    for _ in range(1000):
        port = rng.choice(_LISTEN_PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {_LISTEN_PORTS}")


def ruststash_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ruststash", *args]


def proxy_process_env() -> dict[str, str]:
    """The proxy's own environment: this one, minus proxy settings that would loop requests back."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and not k.startswith("RUSTSTASH_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class ProxyProcess:
    """`ruststash serve` on free loopback ports, with its log captured to a file."""

    def __init__(
        self, workdir: Path, args: list[str], cache_dir: Path | None = None, wrap: list[str] | None = None
    ) -> None:
        """`wrap` is put in front of the command (for example to run the proxy in its own mount namespace)."""
        self.workdir = workdir
        self.wrap = wrap or []
        self.cache_dir = cache_dir or workdir / "cache"
        self.data_dir = workdir / "data"
        self.args = args
        self.log_path = workdir / "proxy.log"
        self.port = 0
        self.admin_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def bundle(self) -> Path:
        return self.data_dir / "ca-bundle.pem"

    @property
    def ca_cert(self) -> Path:
        return self.data_dir / "mitmproxy-ca-cert.pem"

    def start(self) -> ProxyProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.admin_port = self.admin_port or free_port()
        command = self.wrap + ruststash_command(
            "serve",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--admin-listen",
            f"127.0.0.1:{self.admin_port}",
            "--cache-dir",
            str(self.cache_dir),
            "--data-dir",
            str(self.data_dir),
            *self.args,
        )
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=proxy_process_env())
        log.close()
        deadline = time.monotonic() + PROXY_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ruststash exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        process, self.process = self.process, None
        process.kill()
        process.wait()
        raise RuntimeError(f"ruststash did not become healthy within {PROXY_START_TIMEOUT:.0f} s:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            return 0
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise RuntimeError("ruststash did not stop within 15 s of SIGTERM") from None
        return process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def access(self) -> list[dict[str, str]]:
        """The per-request log lines, parsed."""
        records = []
        for line in self.log().splitlines():
            if "ruststash.access:" in line:
                fields = {k: v.strip('"') for k, v in _LOGFMT.findall(line.split("ruststash.access:", 1)[1])}
                records.append(fields)
        return records


def proxy_client_env(proxy: ProxyProcess) -> dict[str, str]:
    """What `ruststash env` exports, for a client of `proxy` (added to a clean environment)."""
    return {
        "HTTPS_PROXY": proxy.url,
        "https_proxy": proxy.url,
        "SSL_CERT_FILE": str(proxy.bundle),
        "CARGO_HTTP_CAINFO": str(proxy.bundle),
    }
