"""Bundles: export and import, every byte checked, nothing committed from a damaged bundle."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ruststash.bundle import BundleError, export_bundle, exportable_keys, import_bundle
from ruststash.store import Store
from ruststash.warm import LockedCrate, ToolchainSpec, crate_key, index_key, select_from_store

HOST = "x86_64-unknown-linux-gnu"
DIST = "https://static.rust-lang.org/dist/2026-04-14"
CRATE_BODY = b"a crate, pretend it is a gzipped tarball" * 10
DEP_INDEX_LINE = {"name": "dep", "vers": "0.1.0", "deps": [], "cksum": "0" * 64, "features": {}, "yanked": False}
ARCHIVES = {f"rustc-9.98.0-{HOST}.tar.xz": b"rustc archive" * 50, f"cargo-9.98.0-{HOST}.tar.xz": b"cargo" * 70}


def index_line(name: str, vers: str, body: bytes, deps: tuple[str, ...] = ()) -> bytes:
    entry = {
        "name": name,
        "vers": vers,
        "deps": [{"name": d, "req": "^0.1", "kind": "normal", "optional": False} for d in deps],
        "cksum": hashlib.sha256(body).hexdigest(),
        "features": {},
        "yanked": False,
    }
    return json.dumps(entry).encode() + b"\n"


def manifest_toml() -> bytes:
    lines = ['manifest-version = "2"', 'date = "2026-04-14"', "[pkg.rust]", 'version = "9.98.0"']
    lines += [f"[pkg.rust.target.{HOST}]", "available = true"]
    for pkg in ("rustc", "cargo"):
        lines += [f"[[pkg.rust.target.{HOST}.components]]", f'pkg = "{pkg}"', f'target = "{HOST}"']
    for name, body in ARCHIVES.items():
        pkg = name.split("-", 1)[0]
        lines += [f"[pkg.{pkg}]", 'version = "9.98.0"', f"[pkg.{pkg}.target.{HOST}]", "available = true"]
        lines += [f'xz_url = "{DIST}/{name}"', f'xz_hash = "{hashlib.sha256(body).hexdigest()}"']
    lines += ["[profiles]", 'minimal = ["rustc", "cargo"]']
    return ("\n".join(lines) + "\n").encode()


def put(store: Store, key: str, body: bytes, *, stored_at: float | None = None, lifetime: float = 600.0) -> None:
    store.put(
        key,
        body,
        status=200,
        headers=(("content-type", "application/octet-stream"), ("etag", f'"{len(body)}"')),
        stored_at=time.time() if stored_at is None else stored_at,
        lifetime=lifetime,
    )


def fill(store: Store) -> None:
    """A consistent little cache: config, two index files, a crate, a manifest, its archives and their hashes."""
    put(store, "config:index.crates.io/config.json", b'{"dl": "https://static.crates.io/crates"}')
    put(store, index_key("demo"), index_line("demo", "1.0.0", CRATE_BODY, deps=("dep",)))
    put(store, index_key("dep"), json.dumps(DEP_INDEX_LINE).encode() + b"\n")
    put(store, crate_key("demo", "1.0.0"), CRATE_BODY, lifetime=math.inf)
    manifest = manifest_toml()
    put(store, "manifest:static.rust-lang.org/dist/channel-rust-stable.toml", manifest)
    facts = {}
    for name, body in ARCHIVES.items():
        put(store, f"archive:static.rust-lang.org/dist/2026-04-14/{name}", body, lifetime=math.inf)
        facts[f"archive-sha256:static.rust-lang.org/dist/2026-04-14/{name}"] = hashlib.sha256(body).hexdigest()
    store.put_meta(facts)


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "source")
    fill(store)
    yield store
    store.close()


def new_store(path: Path) -> Store:
    return Store(path, clean_tmp=False)


def snapshot(store: Store) -> dict[str, tuple[str, int, tuple[tuple[str, str], ...], float, float]]:
    return {e.key: (e.digest, e.status, e.headers, e.stored_at, e.lifetime) for e, _ in store.entries()}


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()]


def test_export_then_import_reproduces_entries_bodies_and_meta(source: Store, tmp_path: Path) -> None:
    bundle = tmp_path / "all.tar.gz"
    report = export_bundle(source, exportable_keys(source), source.meta_items("archive-sha256:"), bundle)
    assert report.entries == 7 and report.bodies == 7
    with tarfile.open(bundle, "r:gz") as tar:  # an ordinary tar.gz to standard tools
        names = tar.getnames()
    assert names[0] == "ruststash-bundle.json" and len(names) == 8

    target = new_store(tmp_path / "target")
    try:
        first = import_bundle(target, bundle)
        assert (first.new, first.present, first.bodies) == (7, 0, 7)
        assert snapshot(target) == snapshot(source)
        for entry, _ in target.entries():
            assert target.read(entry) == source.read(source.peek(entry.key))  # type: ignore[arg-type]
        assert target.meta_items() == source.meta_items()
        again = import_bundle(target, bundle)  # idempotent
        assert (again.new, again.updated, again.present, again.bodies) == (0, 0, 7, 0)
        assert snapshot(target) == snapshot(source)
    finally:
        target.close()


def test_selection_follows_the_lockfile_and_the_toolchain(source: Store, tmp_path: Path) -> None:
    spec = ToolchainSpec("stable", "stable", None, HOST)
    chosen = select_from_store(source, [LockedCrate("demo", "1.0.0")], [spec], [HOST], [], "minimal")
    assert chosen.missing == []
    assert set(chosen.keys) == {e.key for e, _ in source.entries()}  # dep's index file came from demo's entry
    assert set(chosen.meta) == set(source.meta_items())
    missing = select_from_store(source, [LockedCrate("absent", "2.0.0")], [], [HOST], [], "minimal")
    assert any("absent" in line for line in missing.missing)


def test_incremental_import_adds_only_what_is_new(source: Store, tmp_path: Path) -> None:
    small, full = tmp_path / "small.tar.gz", tmp_path / "full.tar.gz"
    export_bundle(source, [index_key("demo"), crate_key("demo", "1.0.0")], {}, small)
    export_bundle(source, exportable_keys(source), source.meta_items(), full)
    target = new_store(tmp_path / "target")
    try:
        assert import_bundle(target, small).new == 2
        report = import_bundle(target, full)
        assert (report.new, report.present, report.bodies) == (5, 2, 5)
        assert snapshot(target) == snapshot(source)
    finally:
        target.close()


def test_the_newer_index_file_wins_and_immutable_entries_are_kept(source: Store, tmp_path: Path) -> None:
    bundle = tmp_path / "b.tar.gz"
    export_bundle(source, exportable_keys(source), {}, bundle)
    target = new_store(tmp_path / "target")
    try:
        newer = index_line("demo", "1.0.0", CRATE_BODY, deps=("dep",)) + index_line("demo", "1.1.0", b"x")
        put(target, index_key("demo"), newer, stored_at=time.time() + 100)
        older = json.dumps({**DEP_INDEX_LINE, "vers": "0.0.1"}).encode() + b"\n"
        put(target, index_key("dep"), older, stored_at=0.0)
        report = import_bundle(target, bundle)
        assert (report.kept, report.updated) == (1, 1)
        assert target.read(target.peek(index_key("demo"))) == newer  # type: ignore[arg-type]
        assert target.peek(index_key("dep")).digest == source.peek(index_key("dep")).digest  # type: ignore[union-attr]
    finally:
        target.close()


@pytest.fixture
def small_bundle(tmp_path: Path, source: Store) -> bytes:
    path = tmp_path / "small.tar.gz"
    keys = [
        index_key("demo"),
        crate_key("demo", "1.0.0"),
        "manifest:static.rust-lang.org/dist/channel-rust-stable.toml",
    ]
    export_bundle(source, keys, {}, path)
    return path.read_bytes()


@pytest.mark.parametrize("mask", [0xFF, 0x80])
def test_any_flipped_byte_is_refused_and_nothing_is_committed(tmp_path: Path, small_bundle: bytes, mask: int) -> None:
    target = new_store(tmp_path / "target")
    bad = tmp_path / "bad.tar.gz"
    try:
        for position in range(len(small_bundle)):
            data = bytearray(small_bundle)
            data[position] ^= mask
            bad.write_bytes(bytes(data))
            with pytest.raises(BundleError, match="nothing was imported"):
                import_bundle(target, bad)
        assert list(target.entries()) == []
        assert files_under(tmp_path / "target" / "blobs") == []
        assert files_under(tmp_path / "target" / "tmp") == []
    finally:
        target.close()


def test_truncated_or_foreign_files_are_refused(tmp_path: Path, small_bundle: bytes) -> None:
    target = new_store(tmp_path / "target")
    try:
        for name, data in {
            "cut": small_bundle[: len(small_bundle) // 2],
            "longer": small_bundle + b"\0",
            "empty": b"",
            "text": b"hello\n",
            "plain-gzip": gzip.compress(b"not a tar"),
        }.items():
            path = tmp_path / name
            path.write_bytes(data)
            with pytest.raises(BundleError) as caught:
                import_bundle(target, path)
            assert "\n" not in str(caught.value)
        assert list(target.entries()) == []
    finally:
        target.close()


def _rewrap(path: Path, out: Path, edit: dict[str, bytes]) -> None:
    """Re-seal a bundle after changing members: a self-consistent file whose contents are wrong."""
    from ruststash import bundle as module

    with tarfile.open(path, "r:gz") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    with out.open("wb") as raw:
        gz = module._GzipWriter(raw)
        with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for name, data in members:
                data = edit.get(name, data)
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        gz.finish()


def test_a_resealed_bundle_is_still_checked_like_live_traffic(tmp_path: Path, source: Store) -> None:
    # A crate whose body is not what its index publishes, in a bundle whose own checksums all agree.
    wrong = b"not the crate the index describes"
    store = Store(tmp_path / "poisoned")
    try:
        put(store, index_key("demo"), index_line("demo", "1.0.0", CRATE_BODY))
        put(store, crate_key("demo", "1.0.0"), wrong, lifetime=math.inf)
        export_bundle(store, exportable_keys(store), {}, tmp_path / "poisoned.tar.gz")
    finally:
        store.close()
    target = new_store(tmp_path / "target")
    try:
        with pytest.raises(BundleError, match="does not match the cksum"):
            import_bundle(target, tmp_path / "poisoned.tar.gz")
        # A manifest entry pointing at a body that is listed with the wrong digest.
        export_bundle(source, exportable_keys(source), {}, tmp_path / "good.tar.gz")
        manifest = json.loads(_member(tmp_path / "good.tar.gz", "ruststash-bundle.json"))
        victim = next(e for e in manifest["entries"] if e["key"].startswith("archive:"))
        wrong_archive = b"x" * victim["size"]
        _rewrap(tmp_path / "good.tar.gz", tmp_path / "resealed.tar.gz", {f"blobs/{victim['digest']}": wrong_archive})
        with pytest.raises(BundleError, match="has sha256"):
            import_bundle(target, tmp_path / "resealed.tar.gz")
        assert list(target.entries()) == []
        assert files_under(tmp_path / "target" / "tmp") == []
    finally:
        target.close()


def _member(path: Path, name: str) -> bytes:
    with tarfile.open(path, "r:gz") as tar:
        return tar.extractfile(name).read()  # type: ignore[union-attr]


def test_entries_kept_per_credential_are_never_exported(tmp_path: Path, source: Store) -> None:
    put(source, index_key("private") + "#cred:0123456789abcdef", b"")
    keys = exportable_keys(source)
    assert not [k for k in keys if "#cred:" in k]
    export_bundle(source, [*keys, index_key("private") + "#cred:0123456789abcdef"], {}, tmp_path / "b.tar.gz")
    entries = json.loads(_member(tmp_path / "b.tar.gz", "ruststash-bundle.json"))["entries"]
    assert not [e for e in entries if "#cred:" in e["key"]]


def test_command_line(source: Store, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from ruststash.cli import main

    source.close()
    clean = {name: None for name in os.environ if name.startswith("RUSTSTASH_")}
    runner = CliRunner(env=clean)
    lock = tmp_path / "Cargo.lock"
    lock.write_text(
        '[[package]]\nname = "demo"\nversion = "1.0.0"\nsource = "registry+https://github.com/rust-lang/crates.io-index"\n'
    )
    cache = ["--cache-dir", str(tmp_path / "source")]
    selectors = [str(lock), "--toolchain", f"stable-{HOST}", "--profile", "minimal"]
    out = tmp_path / "out.tar.gz"
    done = runner.invoke(main, ["export", *selectors, *cache, "--output", str(out)])
    assert done.exit_code == 0, done.output
    assert "7 entries, 7 bodies" in done.stdout

    short = runner.invoke(main, ["export", *selectors, "--toolchain", "beta", *cache, "-o", str(tmp_path / "x")])
    assert short.exit_code == 2 and "not in the cache: beta channel manifest" in short.stderr
    assert "run `ruststash warm` with the same selectors first" in short.stderr
    assert not (tmp_path / "x").exists()
    partial = runner.invoke(
        main, ["export", *selectors, "--toolchain", "beta", *cache, "-o", str(tmp_path / "x"), "--allow-missing"]
    )
    assert partial.exit_code == 0 and (tmp_path / "x").is_file()
    assert runner.invoke(main, ["export", "--all", str(lock), *cache, "-o", str(tmp_path / "y")]).exit_code == 2

    target = ["--cache-dir", str(tmp_path / "target")]
    imported = runner.invoke(main, ["import", str(out), *target])
    assert imported.exit_code == 0 and "imported 7 entries (7 new, 0 updated)" in imported.stdout
    data = bytearray(out.read_bytes())
    data[len(data) // 3] ^= 0x10
    (tmp_path / "bad.tar.gz").write_bytes(bytes(data))
    refused = runner.invoke(main, ["import", str(tmp_path / "bad.tar.gz"), "--cache-dir", str(tmp_path / "fresh")])
    assert refused.exit_code == 2
    assert refused.stderr.startswith("ruststash: error: ") and refused.stderr.count("\n") == 1
    assert "nothing was imported" in refused.stderr
