"""Air-gapped use, end to end: `warm` and `export` beside a proxy with upstream, `import` into a proxy that
has no upstream at all, then the real cargo and rustup, in fresh homes, work through it.

Proxy A reaches a fake crates.io built from a real lockfile (ripgrep's) and a fake static.rust-lang.org.
Proxy B's upstreams all point at a closed port; the origins are closed before B starts.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ProxyFactory
from tests.harness import free_port, proxy_process_env, ruststash_command
from tests.origins.clients import ConsumerDep, locked_versions, write_consumer
from tests.origins.crates_io import FakeCratesIo
from tests.origins.registry import build_registry, caret_req, registry_cache_dir, spec_from_lockfile
from tests.origins.rustlang import FakeRustDist
from tests.origins.rustup_client import make_rustup_client
from tests.origins.tls import OriginTLS
from tests.test_e2e_cargo import sandbox, upstream_args

pytestmark = pytest.mark.e2e

WORKLOADS = Path(__file__).resolve().parents[2] / "shared" / "workloads"
RIPGREP_LOCK = WORKLOADS / "ripgrep.Cargo.lock"
INTERCEPTED = ("index.crates.io", "static.crates.io", "crates.io", "static.rust-lang.org")


def ruststash(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = proxy_process_env()
    env.pop("TERM", None)
    return subprocess.run(
        ruststash_command(*args), capture_output=True, text=True, env=env, timeout=timeout, check=False
    )


def entries_in(cache_dir: Path) -> int:
    result = ruststash("stats", "--json", "--cache-dir", str(cache_dir), "--admin", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["entries"])


def flipped(source: Path, target: Path, position: int) -> Path:
    data = bytearray(source.read_bytes())
    data[position] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def test_warm_export_import_then_cargo_and_rustup_offline(
    tmp_path: Path,
    start_proxy: ProxyFactory,
    origin_tls: OriginTLS,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    registry = build_registry(spec_from_lockfile(RIPGREP_LOCK), registry_cache_dir(request.config, tmp_path_factory))
    selectors = [str(RIPGREP_LOCK), "--toolchain", "stable", "--profile", "minimal"]
    bundle = tmp_path / "offline.tar.gz"

    # --- A: upstream up. warm runs on A's cache directory while A serves from it.
    crates = FakeCratesIo(registry, origin_tls)
    dist = FakeRustDist(origin_tls, tmp_path / "dist")
    try:
        release = dist.publish("9.98.0", "2026-04-14")
        upstreams = [
            *upstream_args(crates, origin_tls),
            "--upstream",
            f"static.rust-lang.org={dist.url}",
        ]
        proxy_a = start_proxy(upstreams, name="a")
        cache_a = ["--cache-dir", str(proxy_a.cache_dir)]
        warm = ruststash("warm", *selectors, *cache_a, *upstreams, "--no-progress")
        assert warm.returncode == 0, warm.stdout[-3000:] + warm.stderr[-3000:]
        assert " 0 failed" in warm.stdout
        assert "fetched crate memchr" in warm.stdout
        downloads = [r.path for r in crates.records("static") if r.status == 200]
        assert len(downloads) == len(registry.crates) == len(set(downloads))
        fetched_archives = {r.path for r in dist.records() if r.path.endswith(".tar.xz")}
        assert fetched_archives == {release.archive_path(p) for p in ("rustc", "cargo", "rust-std")}

        again = ruststash("warm", *selectors, *cache_a, *upstreams, "--no-progress")
        assert again.returncode == 0, again.stderr
        assert "warm: 0 fetched" in again.stdout and " 0 failed" in again.stdout

        export = ruststash("export", *selectors, *cache_a, "--output", str(bundle))
        assert export.returncode == 0, export.stderr
        assert bundle.is_file()
    finally:
        crates.close()
        dist.close()

    # --- B: no upstream at all (every intercepted host maps to a closed port).
    closed = f"https://127.0.0.1:{free_port()}"
    proxy_b = start_proxy([arg for host in INTERCEPTED for arg in ("--upstream", f"{host}={closed}")], name="b")
    cache_b = ["--cache-dir", str(proxy_b.cache_dir)]

    # A damaged bundle (one byte flipped, anywhere) is refused with one line, and nothing is committed.
    for position in (5, 30, bundle.stat().st_size // 2, bundle.stat().st_size - 1):
        bad = flipped(bundle, tmp_path / f"bad-{position}.tar.gz", position)
        refused = ruststash("import", str(bad), *cache_b)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.startswith("ruststash: error: ") and refused.stderr.count("\n") == 1, refused.stderr
        assert "nothing was imported" in refused.stderr
        assert entries_in(proxy_b.cache_dir) == 0
        assert not [p for p in (proxy_b.cache_dir / "blobs").rglob("*") if p.is_file()]
        assert not list((proxy_b.cache_dir / "tmp").iterdir())

    imported = ruststash("import", str(bundle), *cache_b)
    assert imported.returncode == 0, imported.stderr
    assert "0 already present" in imported.stdout
    again = ruststash("import", str(bundle), *cache_b)
    assert again.returncode == 0 and "imported 0 entries" in again.stdout, again.stdout + again.stderr

    # cargo, fresh homes, lockfile regenerated offline through B, then fetch and build.
    project = write_consumer(tmp_path / "project", registry.consumer_deps())
    box = sandbox(tmp_path / "cargo", proxy_b)
    box.run(["generate-lockfile"], project)
    box.run(["fetch"], project)
    box.run(["build", "--offline"], project)
    lock = locked_versions(project / "Cargo.lock")
    assert {(n, v) for n, vs in lock.items() for v in vs} == {(c.name, c.vers) for c in registry.crates}

    # Adding a dependency that is already in the lockfile's graph resolves offline too.
    roots = {dep.package or dep.key for dep in registry.consumer_deps()}
    extra = next(c for c in sorted(registry.crates, key=lambda c: c.name) if c.name not in roots)
    write_consumer(project, [*registry.consumer_deps(), ConsumerDep("extra-dep", caret_req(extra.vers), extra.name)])
    sandbox(tmp_path / "cargo-2", proxy_b).run(["generate-lockfile"], project)
    assert extra.vers in locked_versions(project / "Cargo.lock")[extra.name]

    # rustup, fresh homes, through B.
    user = make_rustup_client(tmp_path / "rustup", proxy=proxy_b.url, ca_pem=proxy_b.bundle)
    user.install("stable", profile="minimal")
    assert user.run("rustc", "+stable", "--version").stdout.strip() == f"rustc {release.release.full_version}"

    outcomes = {(r["outcome"], r["path"]) for r in proxy_b.access()}
    assert not [o for o in outcomes if o[0] in ("ERROR", "MISS")], sorted(outcomes)

    # stats and ls see what was imported; a dry-run purge changes nothing.
    stats = ruststash("stats", *cache_b, "--admin", f"http://127.0.0.1:{proxy_b.admin_port}")
    assert stats.returncode == 0 and "hit ratio" in stats.stdout, stats.stdout + stats.stderr
    listing = ruststash("ls", "--kind", "archive", *cache_b)
    assert listing.stdout.count("archive:static.rust-lang.org/dist/2026-04-14/") == 3, listing.stdout
    before = entries_in(proxy_b.cache_dir)
    dry = ruststash("purge", "--kind", "crate", *cache_b)
    assert dry.returncode == 0 and "dry run" in dry.stdout
    assert entries_in(proxy_b.cache_dir) == before
