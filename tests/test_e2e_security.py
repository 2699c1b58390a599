"""Who may use the proxy, what it shares between users, and where it may connect for them."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import ProxyFactory
from tests.harness import ProxyProcess, free_port, proxy_process_env, ruststash_command
from tests.origins.clients import write_consumer
from tests.origins.crates_io import FakeCratesIo
from tests.origins.registry import Registry
from tests.origins.server import BackgroundServer
from tests.origins.tls import OriginTLS
from tests.test_e2e_cargo import sandbox, upstream_args

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


def test_listening_beyond_loopback_must_be_asked_for(tmp_path: Path) -> None:
    result = subprocess.run(
        ruststash_command(
            "serve", "--listen", f"0.0.0.0:{free_port()}", "--admin-listen", f"127.0.0.1:{free_port()}",
            "--cache-dir", str(tmp_path / "c"), "--data-dir", str(tmp_path / "d"),
        ),
        capture_output=True, text=True, timeout=60, env=proxy_process_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "reachable from other machines: pass --allow-remote" in result.stderr


def raw_connect(port: int, target: str, extra: str = "") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{extra}\r\n".encode())
        return sock.recv(4096)


def test_proxy_authentication(
    tmp_path: Path, start_proxy: ProxyFactory, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    proxy = start_proxy([*upstream_args(crates_origin, origin_tls), "--allow-remote", "--proxy-auth", "ci:s3cret"])
    assert raw_connect(proxy.port, "index.crates.io:443").startswith(b"HTTP/1.1 407")
    project = write_consumer(tmp_path / "project", crates_origin.registry.consumer_deps())
    box = sandbox(tmp_path / "client", proxy)
    denied = box.run(["generate-lockfile"], project, check=False, extra_env={"CARGO_NET_RETRY": "0"})
    assert denied.returncode != 0
    with_auth = proxy.url.replace("http://", "http://ci:s3cret@")
    box.run(["generate-lockfile"], project, extra_env={"HTTPS_PROXY": with_auth, "https_proxy": with_auth})


def get_with(proxy: ProxyProcess, url: str, headers: dict[str, str]) -> bytes:
    context = ssl.create_default_context(cafile=str(proxy.ca_cert))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"https": proxy.url}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(urllib.request.Request(url, headers=headers), timeout=30) as response:
        body: bytes = response.read()
        return body


def test_entries_are_never_shared_between_credentials(
    start_proxy: ProxyFactory, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    proxy = start_proxy(upstream_args(crates_origin, origin_tls))
    crate = crates_origin.registry.crates[0]
    index = f"https://index.crates.io/{crates_origin.registry.index_path(crate.name)}"
    download = f"https://static.crates.io{crate.download_path}"
    for headers in ({"Authorization": "alice"}, {"Authorization": "alice"}, {"Authorization": "bob"}, {}):
        get_with(proxy, index, headers)
        get_with(proxy, download, headers)
    index_path = "/" + crates_origin.registry.index_path(crate.name)
    # alice once (then her own cached copy), bob once, anonymous once: never someone else's entry.
    assert crates_origin.count(index_path, site="index") == 3
    assert crates_origin.count(crate.download_path, site="static") == 3
    outcomes = [r["outcome"] for r in proxy.access() if r["path"] == crate.download_path]
    assert outcomes == ["MISS", "HIT", "MISS", "MISS"]


@pytest.fixture
def internal_service(origin_tls: OriginTLS) -> Iterator[BackgroundServer]:
    async def secret(_: web.Request) -> web.Response:
        return web.Response(text="internal")

    app = web.Application()
    app.router.add_get("/", secret)
    server = BackgroundServer(app, origin_tls.server_context())
    server.start()
    yield server
    server.close()


def test_egress_guard_denies_private_tunnels_but_cached_hosts_still_work(
    tmp_path: Path,
    start_proxy: ProxyFactory,
    crates_origin: FakeCratesIo,
    origin_tls: OriginTLS,
    internal_service: BackgroundServer,
) -> None:
    proxy = start_proxy([*upstream_args(crates_origin, origin_tls), "--deny-private-tunnels"])
    assert not reaches_internal_service(proxy.port, internal_service.port, origin_tls)
    assert "--deny-private-tunnels is set" in proxy.log()
    # The registry itself lives on 127.0.0.1 here, but it is a configured origin: cargo still works.
    project = write_consumer(tmp_path / "project", crates_origin.registry.consumer_deps())
    box = sandbox(tmp_path / "client", proxy)
    box.run(["generate-lockfile"], project)
    box.run(["fetch"], project)


def test_deny_private_tunnels_connects_to_the_address_it_checked(tmp_path: Path) -> None:
    """DNS rebinding: a name that is public when checked and internal a moment later, or that does not
    resolve when checked, must not reach the internal address (tests/netns_rebinding.py sets the scene in a
    network namespace of its own, with its own name server)."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("ip")):
        pytest.fail("this test needs root, unshare (util-linux) and ip (iproute2)")
    scenario = [
        "unshare",
        "--net",
        "--mount",
        "--propagation",
        "private",
        sys.executable,
        "-m",
        "tests.netns_rebinding",
    ]
    result = subprocess.run(
        [*scenario, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["answers"] == {"rebind.test": "public", "late.test": ""}, report["log"]
    assert report["a_queries"] == {"rebind.test": 1, "late.test": 1}, "each name is looked up once, for the check"
    assert "late.test does not resolve and --deny-private-tunnels is set" in report["log"]


def reaches_internal_service(proxy_port: int, target_port: int, tls: OriginTLS) -> bool:
    """CONNECT, then TLS and a GET through the tunnel: True if the internal service answered. With lazy
    connections the proxy connects (and the guard decides) only once the client's TLS hello arrives."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as raw:
        raw.sendall(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\n\r\n".encode())
        if not raw.recv(4096).startswith(b"HTTP/1.1 200"):
            return False
        try:
            with tls.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as conn:
                conn.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return b"internal" in conn.recv(4096)
        except (ssl.SSLError, ConnectionError, TimeoutError):
            return False


def test_tunnel_allow_list(
    start_proxy: ProxyFactory, origin_tls: OriginTLS, internal_service: BackgroundServer
) -> None:
    open_proxy = start_proxy([], name="open")
    assert reaches_internal_service(open_proxy.port, internal_service.port, origin_tls), "the test cannot fail"
    proxy = start_proxy(["--tunnel-allow", "github.com"], name="guarded")
    assert not reaches_internal_service(proxy.port, internal_service.port, origin_tls)
    assert "is not in --tunnel-allow" in proxy.log()


@pytest.mark.parametrize("cache_control", ["private, max-age=600", "no-store"])
def test_private_and_no_store_responses_are_not_stored(
    start_proxy: ProxyFactory, edge_registry: Registry, origin_tls: OriginTLS, cache_control: str
) -> None:
    origin = FakeCratesIo(edge_registry, origin_tls, index_cache_control=cache_control)
    try:
        proxy = start_proxy(upstream_args(origin, origin_tls))
        crate = edge_registry.crates[0]
        url = f"https://index.crates.io/{edge_registry.index_path(crate.name)}"
        first, second = get_with(proxy, url, {}), get_with(proxy, url, {})
        assert first == second == edge_registry.index_file(crate.name)
        assert origin.count("/" + edge_registry.index_path(crate.name), site="index") == 2
        assert {r.get("note") for r in proxy.access()} == {"not stored: upstream said no-store/private"}
    finally:
        origin.close()
