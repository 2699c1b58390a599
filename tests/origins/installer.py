"""Build real rust-installer tarballs (the archives rustup downloads and unpacks) with deterministic bytes.

An archive holds one top directory, e.g. ``rustc-9.99.0-x86_64-unknown-linux-gnu/``, with

* ``rust-installer-version`` (``3``), ``components`` (one component directory name per line),
  ``version`` and ``git-commit-hash``;
* per component a directory with ``manifest.in`` (lines ``file:<path>`` or ``dir:<path>``) and the files.

The "binaries" are tiny POSIX shell scripts printing the fake release's version (``rustc -vV`` works), so a
toolchain installed from these archives can be run. Archives are byte-for-byte deterministic (fixed mtimes,
owners, order and compressor settings) and are cached on disk, keyed by everything that shapes their bytes.

``pad_bytes`` adds an incompressible, deterministic pseudo-random file to a component, for large-download tests.
Padded archives are generated streaming (never held in memory); their ``.tar.xz`` is written as *stored*
LZMA2 chunks (a valid xz file that liblzma reads, built in seconds instead of minutes) and their ``.tar.gz``
with deflate level 0.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import lzma
import os
import random
import struct
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal, Protocol, cast

HOST_TRIPLE = "x86_64-unknown-linux-gnu"
INSTALLER_VERSION = "3"
# Bump when the archive layout or contents change: it is part of the cache key.
BUILDER_VERSION = "1"
DEFAULT_CACHE_DIR = Path(
    os.environ.get("RUSTSTASH_TEST_ARCHIVE_CACHE", Path(tempfile.gettempdir()) / "ruststash-test-archives")
)

Channel = Literal["stable", "beta", "nightly"]
Compression = Literal["gz", "xz"]
COMPRESSIONS: tuple[Compression, ...] = ("gz", "xz")


@dataclass(frozen=True)
class Release:
    """The identity of one fake Rust release: what `rustc --version` prints and how archives are named."""

    version: str  # "9.99.0"
    date: str  # "2026-05-01", the build date (and the dist/ directory the archives live in)
    channel: Channel = "stable"

    @property
    def archive_version(self) -> str:
        """The version part of archive names: ``9.99.0`` for stable, ``beta`` / ``nightly`` otherwise."""
        return self.version if self.channel == "stable" else self.channel

    @property
    def rustc_release(self) -> str:
        """``9.99.0``, ``9.99.0-beta.1`` or ``9.99.0-nightly``, as in `rustc -vV`'s ``release:`` line."""
        return {"stable": self.version, "beta": f"{self.version}-beta.1", "nightly": f"{self.version}-nightly"}[
            self.channel
        ]

    @property
    def commit_hash(self) -> str:
        """A 40-hex fake git commit derived from the release identity."""
        return hashlib.sha1(f"{self.channel}/{self.version}/{self.date}".encode()).hexdigest()

    @property
    def full_version(self) -> str:
        """E.g. ``9.99.0 (abcdef123 2026-05-01)``: the manifest's package version and the binaries' output."""
        return f"{self.rustc_release} ({self.commit_hash[:9]} {self.date})"

    @property
    def mtime(self) -> int:
        """The fixed mtime of every archive member: midnight UTC of the release date."""
        return int(datetime.strptime(self.date, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())


@dataclass(frozen=True)
class Component:
    """A rustup component as the channel manifest names it (``pkg``) and as archives are named (``stem``)."""

    pkg: str  # "rustfmt-preview"
    stem: str  # "rustfmt": archive file names start with it
    per_target: bool = True  # False: one archive for target "*" (rust-src)

    def directory(self, target: str) -> str:
        """The component directory inside the archive (rust-std is suffixed by its target, as upstream)."""
        return f"{self.pkg}-{target}" if self.pkg == "rust-std" else self.pkg

    def top_directory(self, release: Release, target: str) -> str:
        """The archive's top directory, which is also its file name without extension."""
        if not self.per_target:
            return f"{self.stem}-{release.archive_version}"
        return f"{self.stem}-{release.archive_version}-{target}"

    def file_name(self, release: Release, target: str, compression: Compression) -> str:
        return f"{self.top_directory(release, target)}.tar.{compression}"


COMPONENTS: dict[str, Component] = {
    c.pkg: c
    for c in (
        Component("rustc", "rustc"),
        Component("cargo", "cargo"),
        Component("rust-std", "rust-std"),
        Component("rust-docs", "rust-docs"),
        Component("rustfmt-preview", "rustfmt"),
        Component("clippy-preview", "clippy"),
        Component("rust-src", "rust-src", per_target=False),
    )
}
# The combined "rust" package: one archive holding the components a default-profile install gets.
RUST_COMBINED = Component("rust", "rust")
COMBINED_PKGS = ("rustc", "rust-std", "cargo", "rust-docs", "rustfmt-preview", "clippy-preview")


@dataclass(frozen=True)
class BuiltArchive:
    """One component archive in both compressions, stored in the builder's cache directory."""

    file_names: dict[Compression, str]
    paths: dict[Compression, Path]
    sha256: dict[Compression, str]

    def size(self, compression: Compression) -> int:
        return self.paths[compression].stat().st_size


# --------------------------------------------------------------------------------------------------
# Archive contents


@dataclass(frozen=True)
class _Member:
    """A file in a component directory; ``pad`` > 0 means "this many pseudo-random bytes" instead of data."""

    path: str
    data: bytes = b""
    executable: bool = False
    pad: int = 0
    seed: str = ""


def _tool_script(name: str, release: Release, target: str) -> bytes:
    """A shell script standing in for a Rust tool: ``-V``/``--version`` and ``-vV`` print the release."""
    release_name = release.rustc_release
    verbose = (
        f"{name} {release.full_version}\\n"
        f"binary: {name}\\n"
        f"commit-hash: {release.commit_hash}\\n"
        f"commit-date: {release.date}\\n"
        f"host: {target}\\n"
        f"release: {release_name}\\n"
    )
    if name == "rustc":
        verbose += "LLVM version: 99.0.0\\n"
    return f"""#!/bin/sh
# Fake {name} {release_name} built by the ruststash test suite.
version=""; verbose=""
for arg in "$@"; do
    case "$arg" in
        -vV|-Vv) version=1; verbose=1 ;;
        -V|--version) version=1 ;;
        -v|--verbose) verbose=1 ;;
    esac
done
if [ -n "$version" ] && [ -n "$verbose" ]; then printf '{verbose}'; exit 0; fi
if [ -n "$version" ]; then echo '{name} {release.full_version}'; exit 0; fi
if [ "$1" = "--print" ] && [ "$2" = "sysroot" ]; then cd "$(dirname "$0")/.." && pwd; exit 0; fi
echo "fake {name} {release_name}: unsupported arguments: $*" >&2
exit 1
""".encode()


def _payload(component: Component, release: Release, target: str) -> tuple[list[_Member], list[str]]:
    """The files of one component and the ``dir:`` entries of its manifest.in (else every file is ``file:``)."""
    tag = release.commit_hash[:16]
    text = f"{component.pkg} {release.full_version} for {target}\n".encode()

    def tools(*names: str) -> list[_Member]:
        return [_Member(f"bin/{n}", _tool_script(n, release, target), executable=True) for n in names]

    match component.pkg:
        case "rustc":
            files = [
                *tools("rustc", "rustdoc"),
                _Member(f"lib/librustc_driver-{tag}.so", text),
                _Member("share/doc/rustc/README.md", text),
            ]
            return files, []
        case "cargo":
            files = [*tools("cargo"), _Member("etc/bash_completion.d/cargo", b"# fake completion\n")]
            return files, []
        case "rust-std":
            lib = f"lib/rustlib/{target}/lib"
            return [_Member(f"{lib}/libstd-{tag}.rlib", text), _Member(f"{lib}/libcore-{tag}.rlib", text)], []
        case "rust-docs":
            html = "share/doc/rust/html"
            page = f"<html><body>{release.full_version}</body></html>\n".encode()
            return [_Member(f"{html}/index.html", page), _Member(f"{html}/std/index.html", page)], [html]
        case "rustfmt-preview":
            return tools("rustfmt", "cargo-fmt"), []
        case "clippy-preview":
            return tools("cargo-clippy", "clippy-driver"), []
        case "rust-src":
            src = "lib/rustlib/src/rust"
            return [_Member(f"{src}/library/std/src/lib.rs", b"//! fake std\n")], [src]
        case _:
            raise ValueError(f"no contents defined for component {component.pkg!r}")


def _component_members(
    component: Component, release: Release, target: str, pad_bytes: int
) -> tuple[str, list[_Member]]:
    """The members of one component directory (including manifest.in), relative to the archive's top dir."""
    directory = component.directory(target)
    files, dirs = _payload(component, release, target)
    if pad_bytes:
        seed = f"{release.channel}/{release.version}/{release.date}/{directory}"
        files.append(_Member(f"share/ruststash-pad/{directory}.bin", pad=pad_bytes, seed=seed))
    listed = [f"dir:{d}" for d in dirs]
    listed += [f"file:{f.path}" for f in files if not any(f.path.startswith(d + "/") for d in dirs)]
    manifest = "".join(f"{line}\n" for line in sorted(listed)).encode()
    members = [_Member("manifest.in", manifest), *files]
    return directory, [_Member(f"{directory}/{m.path}", m.data, m.executable, m.pad, m.seed) for m in members]


def _archive_members(release: Release, parts: list[tuple[str, list[_Member]]]) -> list[_Member]:
    """All members below the top directory: installer metadata files first, then the components."""
    names = "".join(f"{directory}\n" for directory, _ in parts).encode()
    members = [
        _Member("components", names),
        _Member("git-commit-hash", f"{release.commit_hash}\n".encode()),
        _Member("rust-installer-version", f"{INSTALLER_VERSION}\n".encode()),
        _Member("version", f"{release.full_version}\n".encode()),
    ]
    for _, component_members in parts:
        members.extend(component_members)
    return members


# --------------------------------------------------------------------------------------------------
# Streams


class _PseudoRandom(io.RawIOBase):
    """A readable stream of exactly ``size`` deterministic pseudo-random bytes, generated 1 MiB at a time."""

    CHUNK = 1 << 20

    def __init__(self, size: int, seed: str) -> None:
        self._left = size
        self._random = random.Random(hashlib.sha256(seed.encode()).digest())
        self._buffer = b""
        self._offset = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        out = bytearray()
        while len(out) < size:
            if self._offset == len(self._buffer):
                self._buffer, self._offset = self._random.randbytes(self.CHUNK), 0
            take = min(size - len(out), len(self._buffer) - self._offset)
            out += self._buffer[self._offset : self._offset + take]
            self._offset += take
        self._left -= size
        return bytes(out)


def _varint(value: int) -> bytes:
    """xz's multibyte integer encoding."""
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class StoredXzWriter:
    """Write a valid single-block .xz file whose LZMA2 data is only *uncompressed* chunks.

    Compressing incompressible data with liblzma runs at a few MB/s; storing it costs a CRC. The result
    decompresses with any xz implementation (rustup's included). Check type: CRC32.
    """

    _CHUNK = 1 << 16  # LZMA2 uncompressed chunks hold at most 64 KiB
    _FLAGS = b"\x00\x01"  # check type CRC32

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._pending = bytearray()
        self._first = True
        self._crc = 0
        self._uncompressed = 0
        self._out.write(b"\xfd7zXZ\x00" + self._FLAGS + struct.pack("<I", zlib.crc32(self._FLAGS)))
        # Block header: size byte, flags (1 filter, no sizes), LZMA2 filter id 0x21 with a 1 MiB dictionary.
        header = bytearray(b"\x02\x00\x21\x01\x10")
        header += b"\x00" * (12 - 4 - len(header))
        self._header = bytes(header) + struct.pack("<I", zlib.crc32(header))
        self._out.write(self._header)
        self._compressed = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._pending += data
        self._crc = zlib.crc32(data, self._crc)
        self._uncompressed += len(data)
        while len(self._pending) >= self._CHUNK:
            self._emit(self._CHUNK)
        return len(data)

    def _emit(self, size: int) -> None:
        control = b"\x01" if self._first else b"\x02"  # 1: reset dictionary (first chunk), 2: keep it
        self._first = False
        self._out.write(control + struct.pack(">H", size - 1))
        self._out.write(self._pending[:size])
        del self._pending[:size]
        self._compressed += 3 + size

    def close(self) -> None:
        if self._pending:
            self._emit(len(self._pending))
        self._out.write(b"\x00")  # end of LZMA2 data
        self._compressed += 1
        unpadded = len(self._header) + self._compressed + 4
        self._out.write(b"\x00" * (-self._compressed % 4))
        self._out.write(struct.pack("<I", self._crc))
        index = bytearray(b"\x00" + _varint(1) + _varint(unpadded) + _varint(self._uncompressed))
        index += b"\x00" * (-len(index) % 4)
        index += struct.pack("<I", zlib.crc32(index))
        self._out.write(index)
        footer = struct.pack("<I", len(index) // 4 - 1) + self._FLAGS
        self._out.write(struct.pack("<I", zlib.crc32(footer)) + footer + b"YZ")


class _Writer(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _Tee:
    """A write-only file object that forwards to several writers (one tar stream, several compressions)."""

    def __init__(self, *writers: _Writer) -> None:
        self._writers = writers

    def write(self, data: bytes) -> int:
        for writer in self._writers:
            writer.write(data)
        return len(data)


def _tar_infos(top: str, members: list[_Member], mtime: int) -> Iterator[tuple[tarfile.TarInfo, BinaryIO | None]]:
    """Tar headers (directories first, parents before children, names sorted) and their data streams."""
    directories = {top}
    for m in members:
        parts = m.path.split("/")[:-1]
        directories.update(f"{top}/{'/'.join(parts[:i])}" for i in range(1, len(parts) + 1))
    entries: list[tuple[str, _Member | None]] = [(d, None) for d in directories]
    entries += [(f"{top}/{m.path}", m) for m in members]
    for name, member in sorted(entries, key=lambda entry: entry[0]):
        info = tarfile.TarInfo(name)
        info.mtime = mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if member is None:
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            yield info, None
            continue
        info.mode = 0o755 if member.executable else 0o644
        if member.pad:
            info.size = member.pad
            yield info, cast(BinaryIO, _PseudoRandom(member.pad, member.seed))
        else:
            info.size = len(member.data)
            yield info, io.BytesIO(member.data)


def write_archives(top: str, members: list[_Member], mtime: int, gz_path: Path, xz_path: Path) -> None:
    """Write one tar stream as both ``.tar.gz`` and ``.tar.xz`` (stored xz / level-0 gzip if padded)."""
    stored = any(m.pad for m in members)
    with ExitStack() as stack:
        gz_file = stack.enter_context(gz_path.open("wb"))
        xz_file = stack.enter_context(xz_path.open("wb"))
        gz = stack.enter_context(
            gzip.GzipFile(filename="", mode="wb", fileobj=gz_file, compresslevel=0 if stored else 9, mtime=0)
        )
        xz: _Writer
        if stored:
            xz = StoredXzWriter(xz_file)
        else:
            xz = stack.enter_context(
                lzma.LZMAFile(xz_file, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=6)
            )
        stream = cast(BinaryIO, _Tee(gz, xz))
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT, bufsize=1 << 20) as tar:
            for info, data in _tar_infos(top, members, mtime):
                tar.addfile(info, data)
        if isinstance(xz, StoredXzWriter):
            xz.close()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# The cached builder


class ArchiveBuilder:
    """Builds component archives into ``cache_dir`` once per distinct input (safe across processes).

    The cache key covers the builder version, the release, the component(s), the target, ``pad_bytes`` and
    the liblzma version, so a cached file is always what a fresh build would produce.
    """

    def __init__(self, cache_dir: Path = DEFAULT_CACHE_DIR) -> None:
        self.cache_dir = cache_dir

    def component(self, release: Release, pkg: str, target: str = HOST_TRIPLE, pad_bytes: int = 0) -> BuiltArchive:
        """The archive of one component (``pkg`` as in the manifest, e.g. ``rustfmt-preview``)."""
        component = COMPONENTS[pkg]
        target = target if component.per_target else "*"
        return self._build(release, component, target, [(component, pad_bytes)])

    def combined(
        self, release: Release, target: str = HOST_TRIPLE, pkgs: Iterable[str] = COMBINED_PKGS
    ) -> BuiltArchive:
        """The combined ``rust-<version>-<target>`` archive holding several (unpadded) components."""
        return self._build(release, RUST_COMBINED, target, [(COMPONENTS[p], 0) for p in pkgs])

    def _build(
        self, release: Release, archive: Component, target: str, parts: list[tuple[Component, int]]
    ) -> BuiltArchive:
        names: dict[Compression, str] = {c: archive.file_name(release, target, c) for c in COMPRESSIONS}
        key = json.dumps(
            [
                BUILDER_VERSION,
                lzma.__name__,
                _liblzma_version(),
                release.__dict__,
                archive.pkg,
                target,
                [(c.pkg, pad) for c, pad in parts],
            ],
            sort_keys=True,
        )
        directory = self.cache_dir / hashlib.sha256(key.encode()).hexdigest()[:24]
        paths: dict[Compression, Path] = {c: directory / names[c] for c in COMPRESSIONS}
        sums = {c: directory / f"{names[c]}.sha256" for c in COMPRESSIONS}
        if not all(p.exists() for p in sums.values()):
            self._write(release, archive, target, parts, directory, names)
        sha = {c: sums[c].read_text().split()[0] for c in COMPRESSIONS}
        return BuiltArchive(file_names=names, paths=paths, sha256=sha)

    @staticmethod
    def _write(
        release: Release,
        archive: Component,
        target: str,
        parts: list[tuple[Component, int]],
        directory: Path,
        names: dict[Compression, str],
    ) -> None:
        """Build into a private temporary directory, then rename files into place (sums last)."""
        directory.mkdir(parents=True, exist_ok=True)
        built = [_component_members(c, release, target, pad) for c, pad in parts]
        members = _archive_members(release, built)
        top = archive.top_directory(release, target)
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            tmp = {c: Path(scratch) / names[c] for c in COMPRESSIONS}
            write_archives(top, members, release.mtime, tmp["gz"], tmp["xz"])
            for c in COMPRESSIONS:
                digest = sha256_file(tmp[c])
                os.replace(tmp[c], directory / names[c])
                sum_tmp = Path(scratch) / f"{names[c]}.sha256"
                sum_tmp.write_text(f"{digest}  {names[c]}\n")
                os.replace(sum_tmp, directory / f"{names[c]}.sha256")


def _liblzma_version() -> str:
    """A fingerprint of the xz encoder (compressed bytes may differ between liblzma versions)."""
    return hashlib.sha256(lzma.compress(b"ruststash" * 64, format=lzma.FORMAT_XZ, preset=6)).hexdigest()[:16]
