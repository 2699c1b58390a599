"""Squid with ssl-bump caching, configured and run by the benchmarks: the peer a site would otherwise deploy.

Debian's ``squid-openssl`` package provides the binaries (``apt-get install -y squid-openssl``). Nothing of the
package's own configuration or service is used: every `SquidProcess` writes its own squid.conf, cache
directory, certificate database, logs and pid file under a work directory and runs ``squid -N`` (no daemon,
one process plus its certificate helpers) on a free port of 127.0.0.1.

How Squid reaches the fake origins while clients keep the real host names: clients send
``CONNECT index.crates.io:443`` (or static.crates.io, static.rust-lang.org) to Squid, which bumps the tunnel
(peek at step 1, bump at step 2, a leaf certificate for the host minted by ``security_file_certgen`` from a
CA generated here) and forwards the decrypted requests to one ``cache_peer ... originserver tls`` per host:
the fake origin's 127.0.0.1 port, verified against the origins' CA, chosen by ``cache_peer_access`` on the
host name. ``never_direct allow all`` keeps Squid from going anywhere else. This is the way Squid is told
"this name is served over there" (an accelerator/origin peer) without binding port 443 or editing
/etc/hosts; the ``hosts_file`` written here maps the names to 127.0.0.1 only so that nothing is resolved
over the network.

Caching: ``.crate`` downloads and rust-installer archives carry their own long ``Cache-Control`` and
``refresh_pattern`` lines make them fresh for a year even without it; ``maximum_object_size`` is raised to
1 GiB (Squid's default of 4 MiB would leave the archives and large crates uncached). Sparse-index files
follow the origin's ``Cache-Control`` (revalidated with If-None-Match when stale).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.harness import free_port

SQUID = Path("/usr/sbin/squid")
CERTGEN = Path("/usr/lib/squid/security_file_certgen")
SQUID_USER = "proxy"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
REBUILD_TIMEOUT = 60.0
CACHE_DIR_MB = 4096
CACHE_MEM_MB = 256


def squid_available() -> str:
    """ "" if Squid with TLS support can run here, else why not."""
    if not SQUID.exists() or not CERTGEN.exists():
        return f"{SQUID} or {CERTGEN} missing: apt-get install -y squid-openssl"
    try:
        pwd.getpwnam(SQUID_USER)
    except KeyError:
        return f"no user {SQUID_USER!r} for Squid to run as"
    return ""


def squid_version() -> str:
    try:
        out = subprocess.run([str(SQUID), "-v"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    first = out.splitlines()[0] if out else "?"
    return first.replace("Squid Cache: Version ", "")


def chown_tree(path: Path, user: str = SQUID_USER) -> None:
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


@dataclass(frozen=True)
class Peer:
    """One host name clients use, and the 127.0.0.1 port of the TLS origin that serves it."""

    host: str
    port: int


class SquidCA:
    """A CA for Squid's ssl-bump (cert + key PEM files) that clients trust instead of the real roots."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="ruststash bench squid", key_type=trustme.KeyType.RSA)
        self.cert_pem = directory / "squid-ca.pem"
        self.key_pem = directory / "squid-ca.key"
        ca.cert_pem.write_to_path(str(self.cert_pem))
        ca.private_key_pem.write_to_path(str(self.key_pem))
        os.chmod(self.key_pem, 0o640)


class SquidProcess:
    """One ``squid -N`` on 127.0.0.1 with its own config under ``workdir``.

    ``cache_dir`` is the ufs cache directory (empty: cold; a copy of a filled one: warm). ``ssl_db`` is the
    certificate database of the ssl-bump helper (created when missing; can be shared by successive instances).
    """

    def __init__(
        self,
        workdir: Path,
        peers: list[Peer],
        origin_ca: Path,
        ca: SquidCA,
        ssl_db: Path,
        cache_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.peers = peers
        self.origin_ca = origin_ca
        self.ca = ca
        self.ssl_db = ssl_db
        self.cache_dir = cache_dir or workdir / "cache"
        self.logs = workdir / "logs"
        self.conf = workdir / "squid.conf"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def access_log(self) -> Path:
        return self.logs / "access.log"

    @property
    def cache_log(self) -> Path:
        return self.logs / "cache.log"

    def config_text(self) -> str:
        hosts = " ".join(p.host for p in self.peers)
        lines = [
            "# written by bench/squid.py",
            f"http_port 127.0.0.1:{self.port} ssl-bump tls-cert={self.ca.cert_pem} tls-key={self.ca.key_pem}"
            " generate-host-certificates=on dynamic_cert_mem_cache_size=16MB",
            f"sslcrtd_program {CERTGEN} -s {self.ssl_db} -M 16MB",
            "sslcrtd_children 4 startup=1 idle=1",
            # Bump at step 1 (client-first: the certificate is minted for the CONNECT host without asking a
            # server). Tunnels to other hosts are refused, since there is no peer for them.
            f"acl bench_hosts dstdomain {hosts}",
            "http_access deny CONNECT !bench_hosts",
            "ssl_bump bump all",
            "http_access allow localhost",
            "http_access deny all",
            "never_direct allow all",
        ]
        for number, peer in enumerate(self.peers):
            name = f"origin{number}"
            lines += [
                f"acl host_{name} dstdomain {peer.host}",
                f"cache_peer 127.0.0.1 parent {peer.port} 0 originserver no-query no-digest name={name}"
                f" tls tls-cafile={self.origin_ca} tls-domain={peer.host}",
                f"cache_peer_access {name} allow host_{name}",
                f"cache_peer_access {name} deny all",
            ]
        lines += [
            f"hosts_file {self.workdir / 'hosts'}",
            f"cache_dir ufs {self.cache_dir} {CACHE_DIR_MB} 16 256",
            f"cache_mem {CACHE_MEM_MB} MB",
            "maximum_object_size 1 GB",
            "maximum_object_size_in_memory 8 MB",
            r"refresh_pattern -i \.crate$ 525600 100% 525600",
            r"refresh_pattern -i ^https://static\.crates\.io/crates/.*/download$ 525600 100% 525600",
            r"refresh_pattern -i /dist/[0-9-]+/.*\.tar\.(xz|gz)$ 525600 100% 525600",
            "refresh_pattern . 0 20% 4320",
            f"access_log stdio:{self.access_log} squid",
            f"cache_log {self.cache_log}",
            "cache_store_log none",
            f"pid_filename {self.workdir / 'squid.pid'}",
            f"coredump_dir {self.workdir}",
            f"cache_effective_user {SQUID_USER}",
            "shutdown_lifetime 1 seconds",
            "dns_nameservers 127.0.0.1",
            "",
        ]
        return "\n".join(lines)

    def start(self) -> SquidProcess:
        if squid_available():
            raise RuntimeError(squid_available())
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Squid drops to the proxy user: it must reach its files (and the CA files) through every parent.
        for parent in [self.workdir, *self.workdir.parents]:
            with contextlib.suppress(OSError):
                os.chmod(parent, os.stat(parent).st_mode | 0o005)
        (self.workdir / "hosts").write_text("".join(f"127.0.0.1 {p.host}\n" for p in self.peers))
        if not self.ssl_db.exists():
            subprocess.run([str(CERTGEN), "-c", "-s", str(self.ssl_db), "-M", "16MB"], check=True, timeout=60)
        self.port = self.port or free_port()
        self.conf.write_text(self.config_text())
        for path in (self.workdir, self.ssl_db, self.cache_dir):
            chown_tree(path)
        if not any(self.cache_dir.iterdir()):
            init = subprocess.run(
                [str(SQUID), "-N", "-z", "-f", str(self.conf)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if init.returncode != 0:
                raise RuntimeError(f"squid -z exited {init.returncode}: {init.stderr[-2000:]}")
        chown_tree(self.cache_dir)
        with (self.workdir / "squid.stderr").open("ab") as err:
            self.process = subprocess.Popen([str(SQUID), "-N", "-f", str(self.conf)], stdout=err, stderr=err)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + max(START_TIMEOUT, REBUILD_TIMEOUT)
        listening = False
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"squid exited with {self.process.returncode}:\n{self.log_tail()}")
            if not listening:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    listening = True
            # A cache directory from an earlier instance is indexed in the background after start-up; wait for
            # it, or the first requests of a warm run would be misses.
            if listening and "Finished rebuilding storage" in self.log_text():
                return
            time.sleep(0.1)
        raise RuntimeError(f"squid did not become ready:\n{self.log_tail()}")

    def stop(self) -> int:
        """SIGTERM (Squid closes connections after ``shutdown_lifetime`` and writes its swap.state), then
        SIGKILL if it is still running after STOP_TIMEOUT. Returns the exit code."""
        if self.process is None:
            return 0
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        return process.returncode

    def log_text(self) -> str:
        return self.cache_log.read_text(errors="replace") if self.cache_log.exists() else ""

    def log_tail(self, size: int = 3000) -> str:
        stderr = self.workdir / "squid.stderr"
        extra = stderr.read_text(errors="replace") if stderr.exists() else ""
        return (self.log_text() + extra)[-size:]

    def access(self) -> list[str]:
        """The access log's lines (one per request: the CONNECT and each bumped request)."""
        if not self.access_log.exists():
            return []
        return [line for line in self.access_log.read_text(errors="replace").splitlines() if line.strip()]


def copy_cache(template: Path, target: Path) -> Path:
    """A copy of a filled Squid cache directory, owned by Squid's user."""
    shutil.copytree(template, target)
    chown_tree(target)
    return target
