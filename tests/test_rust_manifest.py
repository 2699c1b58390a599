from __future__ import annotations

from pathlib import Path

import pytest

from ruststash.rust_manifest import archive_hashes, parse_sha256_file, sha256_file_body

WORKLOAD = Path(__file__).resolve().parents[2] / "shared" / "workloads" / "channel-rust-1.95.0.toml"
H1 = "1" * 64
H2 = "2" * 64


def test_sha256_file_roundtrip() -> None:
    body = sha256_file_body(H1, "channel-rust-stable.toml")
    assert body == f"{H1}  channel-rust-stable.toml\n".encode()
    assert parse_sha256_file(body) == H1
    assert parse_sha256_file(H1.upper().encode()) == H1


@pytest.mark.parametrize("body", [b"", b"nothex  x", b"abc", f"{H1}  a\n{H2}  b\n".encode()])
def test_parse_sha256_file_rejects(body: bytes) -> None:
    assert parse_sha256_file(body) is None


def test_archive_hashes_from_a_small_manifest() -> None:
    manifest = f"""
manifest-version = "2"
date = "2026-04-14"
[pkg.rustc]
version = "9.98.0"
[pkg.rustc.target.x86_64-unknown-linux-gnu]
available = true
url = "https://static.rust-lang.org/dist/2026-04-14/rustc-9.98.0-x86_64-unknown-linux-gnu.tar.gz"
hash = "{H1}"
xz_url = "https://static.rust-lang.org/dist/2026-04-14/rustc-9.98.0-x86_64-unknown-linux-gnu.tar.xz"
xz_hash = "{H2}"
[pkg.rustc.target.aarch64-apple-darwin]
available = false
""".encode()
    assert archive_hashes(manifest) == {
        "/dist/2026-04-14/rustc-9.98.0-x86_64-unknown-linux-gnu.tar.gz": H1,
        "/dist/2026-04-14/rustc-9.98.0-x86_64-unknown-linux-gnu.tar.xz": H2,
    }


def test_archive_hashes_from_the_real_1_95_manifest() -> None:
    hashes = archive_hashes(WORKLOAD.read_bytes())
    assert len(hashes) > 1000
    assert all(path.startswith("/dist/2026-04-16/") for path in hashes)
    assert "/dist/2026-04-16/cargo-1.95.0-x86_64-unknown-linux-gnu.tar.xz" in hashes


@pytest.mark.parametrize("body", [b"not toml [", b'title = "no packages"', b"\xff\xfe"])
def test_archive_hashes_rejects_what_is_not_a_manifest(body: bytes) -> None:
    with pytest.raises(ValueError):
        archive_hashes(body)
