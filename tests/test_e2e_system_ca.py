"""`ruststash ca install` puts the CA in the system trust store, after which cargo needs only HTTPS_PROXY.

The test must not change this machine's trust store: it runs in a private mount namespace (as root) where
/etc/ssl/certs and /usr/local/share/ca-certificates are bind-mounted copies.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ruststash.cli import main
from tests.conftest import ProxyFactory
from tests.origins.clients import clean_env, write_consumer
from tests.origins.crates_io import FakeCratesIo
from tests.origins.tls import OriginTLS
from tests.test_e2e_cargo import crate_downloads, upstream_args

pytestmark = pytest.mark.e2e

SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def test_ca_install_lets_cargo_trust_the_proxy_with_only_https_proxy(
    tmp_path: Path, start_proxy: ProxyFactory, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("update-ca-certificates"):
        pytest.fail("this test needs root, unshare and update-ca-certificates (Debian's ca-certificates)")
    proxy = start_proxy(upstream_args(crates_origin, origin_tls))
    project = write_consumer(tmp_path / "project", crates_origin.registry.consumer_deps())
    certs, local = tmp_path / "etc-ssl-certs", tmp_path / "local-anchors"
    local.mkdir()
    before = SYSTEM_BUNDLE.read_bytes()
    env = clean_env(tmp_path / "home", tmp_path / "cargo-home", {"HTTPS_PROXY": proxy.url})
    env["PATH"] += ":/usr/sbin:/sbin"
    ruststash = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "ruststash"))
    script = f"""
        set -e
        cp -a /etc/ssl/certs/. {certs}/
        mount --bind {certs} /etc/ssl/certs
        mount --bind {local} /usr/local/share/ca-certificates
        {ruststash} ca install --data-dir {shlex.quote(str(proxy.data_dir))}
        cargo generate-lockfile
        cargo fetch
    """
    certs.mkdir()
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "installed /usr/local/share/ca-certificates/ruststash.crt" in result.stdout
    assert (local / "ruststash.crt").read_text() == proxy.ca_cert.read_text()
    assert crate_downloads(crates_origin), "cargo did not go through the proxy"
    assert SYSTEM_BUNDLE.read_bytes() == before, "the machine's own trust store was changed"


def test_ca_install_as_non_root_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real unprivileged user cannot run this interpreter here (it lives under /root), so the uid is faked.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(main, ["ca", "install", "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert "run it as root" in result.output
