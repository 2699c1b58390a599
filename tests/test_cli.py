"""The command line as a user meets it: env output, the CA, and clear one-line errors with exit code 2."""

from __future__ import annotations

import socket
import stat
import subprocess
from pathlib import Path

import pytest

from tests.harness import ProxyProcess, free_port, proxy_process_env, ruststash_command


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ruststash_command(*args), capture_output=True, text=True, timeout=60, env=env or proxy_process_env()
    )


def test_ca_path_creates_a_private_ca(tmp_path: Path) -> None:
    result = run("ca", "path", "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr
    cert = Path(result.stdout.strip())
    assert cert.is_file() and "BEGIN CERTIFICATE" in cert.read_text()
    key = tmp_path / "data" / "mitmproxy-ca.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in cert.read_text()


def test_env_exports_proxy_and_a_bundle_with_system_roots_and_our_ca(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run("env", "--listen", "127.0.0.1:4000", "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    assert "export HTTPS_PROXY=http://127.0.0.1:4000" in result.stdout
    bundle = data / "ca-bundle.pem"
    assert f"export SSL_CERT_FILE={bundle}" in result.stdout
    assert f"export CARGO_HTTP_CAINFO={bundle}" in result.stdout
    text = bundle.read_text()
    our_ca = (data / "mitmproxy-ca-cert.pem").read_text()
    assert our_ca in text
    assert text.count("BEGIN CERTIFICATE") > 10, "the bundle must keep the system roots"


@pytest.mark.parametrize(
    ("shell", "line"),
    [
        ("fish", "set -gx HTTPS_PROXY http://127.0.0.1:3128;"),
        ("powershell", "$env:HTTPS_PROXY = 'http://127.0.0.1:3128'"),
    ],
)
def test_env_shells(tmp_path: Path, shell: str, line: str) -> None:
    result = run("env", "--shell", shell, "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert line in result.stdout.splitlines()


def test_options_come_from_the_environment(tmp_path: Path) -> None:
    env = {**proxy_process_env(), "RUSTSTASH_LISTEN": "0.0.0.0:4567", "RUSTSTASH_DATA_DIR": str(tmp_path)}
    result = run("env", env=env)
    assert "export HTTPS_PROXY=http://127.0.0.1:4567" in result.stdout
    assert (tmp_path / "ca-bundle.pem").exists()


def test_help_shows_every_option_and_its_variable() -> None:
    text = run("serve", "--help").stdout
    for option, variable in [
        ("--listen", "RUSTSTASH_LISTEN"),
        ("--admin-listen", "RUSTSTASH_ADMIN_LISTEN"),
        ("--cache-dir", "RUSTSTASH_CACHE_DIR"),
        ("--data-dir", "RUSTSTASH_DATA_DIR"),
        ("--cache-host", "RUSTSTASH_CACHE_HOST"),
        ("--upstream", "RUSTSTASH_UPSTREAM"),
        ("--upstream-ca", "RUSTSTASH_UPSTREAM_CA"),
        ("--memory-cache", "RUSTSTASH_MEMORY_CACHE"),
        ("--http1-host", "RUSTSTASH_HTTP1_HOST"),
    ]:
        assert option in text and variable in text


def _serve(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        "serve",
        "--data-dir",
        str(tmp_path / "data"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--admin-listen",
        f"127.0.0.1:{free_port()}",
        *extra,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "127.0.0.1:99999"], "port must be between 1 and 65535"),
        (["--listen", "nonsense"], "is not HOST:PORT"),
        (["--upstream", "index.crates.io"], "is not HOST=URL"),
        (["--upstream", "index.crates.io=ftp://x"], "is not an http(s) URL"),
        (["--cache-host", "not a host"], "is not a host name"),
        (["--upstream-ca", "/nonexistent/ca.pem"], "--upstream-ca /nonexistent/ca.pem"),
        (["--memory-cache", "lots"], "--memory-cache 'lots' is not a size"),
        (["--http1-host", "mirror.example"], "not a cached host; name it with --cache-host mirror.example too"),
        (["--http1-host", "not a host"], "is not a host name"),
    ],
)
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = _serve(tmp_path, *(args if "--listen" in args else ["--listen", f"127.0.0.1:{free_port()}", *args]))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = _serve(tmp_path, "--listen", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} (--listen): address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_unwritable_cache_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = _serve(tmp_path, "--listen", f"127.0.0.1:{free_port()}", "--cache-dir", str(blocker / "cache"))
    assert result.returncode == 2
    assert "cannot open the store" in result.stderr and "Traceback" not in result.stderr


def test_group_readable_ca_key_is_refused(tmp_path: Path) -> None:
    assert run("ca", "path", "--data-dir", str(tmp_path / "data")).returncode == 0
    (tmp_path / "data" / "mitmproxy-ca.pem").chmod(0o640)
    result = _serve(tmp_path, "--listen", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2 and "chmod 600" in result.stderr


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    proxy = ProxyProcess(tmp_path, []).start()
    assert proxy.stop() == 0
    assert "Traceback" not in proxy.log()
