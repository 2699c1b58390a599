"""`ruststash export` and `ruststash import`: cache entries moved between machines as one file.

A bundle (format `ruststash-bundle 1`) is a gzip-compressed POSIX tar (`tar tzf` lists it) holding, in order:

    ruststash-bundle.json     the manifest: format, creation time, ruststash version, the entries
                              [{key, digest, size, status, headers, stored_at, lifetime}], meta facts
                              {"archive-sha256:<host><path>": sha256} and the bodies {sha256: size}
    blobs/<sha256>            every distinct body once, named by its sha256

Its gzip header is fixed (no name, time 0) but for one extra field (`RS`, 32 bytes): the sha256 of every byte
that follows the header. So every byte of the file is checked on import: the header against the constant,
the rest against that digest (before anything is unpacked), then gzip's CRC-32, each body against its sha256
and size. Import also applies the checks live traffic gets: a crate must match the `cksum` its index file
publishes, an archive the sha256 its channel manifest gives, index files and config.json must parse. Bodies
are written to the store's tmp/ while they are checked and only moved into place (and the entries pointed at
them, in one transaction) once the whole bundle has passed; a damaged bundle commits nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import os
import re
import struct
import tarfile
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from . import __version__, sparse_index
from .errors import RuststashError
from .policy import Kind
from .rust_manifest import archive_hashes
from .store import BlobWriter, Entry, Store

BUNDLE_FORMAT = "ruststash-bundle 1"
MANIFEST_NAME = "ruststash-bundle.json"
COMPRESS_LEVEL = 6
# gzip member header: magic, deflate, FEXTRA, time 0, no extra flags, OS unknown, XLEN 36, subfield "RS" of
# 32 bytes (the sha256 of everything after the header).
HEADER_PREFIX = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + struct.pack("<H", 36) + b"RS" + struct.pack("<H", 32)
HEADER_SIZE = len(HEADER_PREFIX) + 32
MAX_MANIFEST_BYTES = 512 * 1024 * 1024
CHUNK = 1 << 20
_DIGEST = re.compile(r"[0-9a-f]{64}")
_BLOB_MEMBER = re.compile(r"blobs/([0-9a-f]{64})")
_KEY = re.compile(r"(?P<kind>[a-z_]+):(?P<host>[a-z0-9.-]+(?::[0-9]+)?)(?P<path>/[\x21-\x7e]*)")
_BUNDLED_KINDS = frozenset(k.value for k in Kind) - {Kind.PASS.value, Kind.MANIFEST_SHA256.value}
IMMUTABLE_KINDS = frozenset({Kind.CRATE.value, Kind.ARCHIVE.value})
META_PREFIX = "archive-sha256:"
CREDENTIAL_MARK = "#cred:"


class BundleError(RuststashError):
    """A bundle that cannot be written, or read and trusted."""


class _GzipWriter:
    """A gzip member whose header carries the sha256 of the rest of the file (patched in by `finish`)."""

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        raw.write(HEADER_PREFIX + bytes(32))
        self._deflate = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._crc = 0
        self._size = 0
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._emit(self._deflate.compress(data))
        return len(data)

    def _emit(self, data: bytes) -> None:
        if data:
            self._raw.write(data)
            self._hash.update(data)

    def finish(self) -> None:
        self._emit(self._deflate.flush())
        self._emit(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        self._raw.seek(len(HEADER_PREFIX))
        self._raw.write(self._hash.digest())


# ------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportReport:
    entries: int
    bodies: int
    body_bytes: int
    file_bytes: int


def exportable_keys(store: Store) -> list[str]:
    """Every key `export --all` takes: everything but entries kept per credential (never shared)."""
    return sorted(entry.key for entry, _ in store.entries() if CREDENTIAL_MARK not in entry.key)


def export_bundle(store: Store, keys: Iterable[str], meta: dict[str, str], output: Path) -> ExportReport:
    """Write the entries for `keys` (those the store holds), their bodies and `meta` to `output` (blocking).
    The file appears whole or not at all."""
    entries: list[Entry] = []
    for key in dict.fromkeys(keys):
        entry = store.peek(key)
        if entry is not None and CREDENTIAL_MARK not in key:
            entries.append(entry)
    blobs: dict[str, int] = {}
    for entry in entries:
        blobs.setdefault(entry.digest, entry.size)
    created = time.time()
    manifest = json.dumps(
        {
            "format": BUNDLE_FORMAT,
            "created": created,
            "ruststash": __version__,
            "entries": [_entry_json(entry) for entry in entries],
            "meta": dict(sorted(meta.items())),
            "blobs": blobs,
        },
        indent=1,
        sort_keys=True,
    ).encode()
    output = output.expanduser().absolute()
    partial = output.with_name(f".{output.name}.{os.getpid()}.part")
    try:
        with partial.open("wb") as raw:
            gz = _GzipWriter(raw)
            with tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                _add_bytes(tar, MANIFEST_NAME, manifest, created)
                for digest, size in blobs.items():
                    _add_blob(tar, store, digest, size, created)
            gz.finish()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(partial, output)
    except OSError as exc:
        raise BundleError(f"cannot write {output}: {exc.strerror or exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return ExportReport(len(entries), len(blobs), sum(blobs.values()), output.stat().st_size)


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "key": entry.key,
        "digest": entry.digest,
        "size": entry.size,
        "status": entry.status,
        "headers": [list(h) for h in entry.headers],
        "stored_at": entry.stored_at,
        "lifetime": None if math.isinf(entry.lifetime) else entry.lifetime,
    }


def _tar_info(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o644
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    tar.addfile(_tar_info(name, len(data), mtime), io.BytesIO(data))


class _HashingReader(io.RawIOBase):
    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.hash = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self.hash.update(data)
        return data


def _add_blob(tar: tarfile.TarFile, store: Store, digest: str, size: int, mtime: float) -> None:
    path = store.blob_path(digest)
    try:
        source = path.open("rb")
    except FileNotFoundError:
        raise BundleError(f"body {digest} left the store while exporting (evicted or purged?): try again") from None
    with source:
        reader = _HashingReader(source)
        try:
            tar.addfile(_tar_info(f"blobs/{digest}", size, mtime), reader)
        except OSError as exc:
            if "unexpected end of data" in str(exc):
                raise BundleError(
                    f"stored body {digest} is shorter than its entry says: run `ruststash verify`"
                ) from exc
            raise
    if reader.hash.hexdigest() != digest:
        raise BundleError(f"stored body {digest} does not match its sha256: run `ruststash verify`")


# ------------------------------------------------------------------------------------------- import


@dataclass
class ImportReport:
    new: int = 0
    updated: int = 0
    present: int = 0
    kept: int = 0
    bodies: int = 0
    body_bytes: int = 0
    meta: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"imported {self.new + self.updated} entries ({self.new} new, {self.updated} updated) and "
            f"{self.bodies} bodies ({_size(self.body_bytes)}); {self.present} already present, "
            f"{self.kept} kept as stored"
        )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _damaged(path: Path, why: str) -> BundleError:
    return BundleError(f"{path} is damaged or not a ruststash bundle ({why}); nothing was imported")


def import_bundle(store: Store, path: Path) -> ImportReport:
    """Check the whole bundle, then add what the store lacks (blocking). Raises BundleError, committing
    nothing, if any byte of it is wrong."""
    writers: dict[str, BlobWriter | None] = {}  # digest -> temp body, or None when the store has it already
    try:
        entries, meta, blobs = _read_and_check(store, path, writers)
        return _commit(store, path, entries, meta, blobs, writers)
    finally:
        for writer in writers.values():
            if writer is not None:
                writer.abort()  # (committed ones were renamed away: nothing left to remove)


def _read_and_check(
    store: Store, path: Path, writers: dict[str, BlobWriter | None]
) -> tuple[list[Entry], dict[str, str], dict[str, int]]:
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with raw:
        _check_whole_file(path, raw)
        raw.seek(0)
        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                manifest_bytes = _read_members(store, path, gz, writers)
                while gz.read(CHUNK):  # to the end: gzip checks its CRC-32 and length there
                    pass
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise _damaged(path, f"{type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise BundleError(f"cannot read {path}: {exc.strerror or exc}") from exc
    entries, meta, blobs = _parse_manifest(path, manifest_bytes)
    missing = set(blobs) - set(writers)
    if missing:
        raise _damaged(path, f"{len(missing)} bodies listed in its manifest are not in it")
    _check_contents(store, path, entries, meta, writers)
    return entries, meta, blobs


def _check_whole_file(path: Path, raw: BinaryIO) -> None:
    """The header is the constant, and everything after it hashes to the digest the header carries."""
    head = raw.read(HEADER_SIZE)
    if head[:2] != HEADER_PREFIX[:2]:
        raise BundleError(f"{path} is not a ruststash bundle (not gzip-compressed); nothing was imported")
    if len(head) < HEADER_SIZE or head[: len(HEADER_PREFIX)] != HEADER_PREFIX:
        raise _damaged(path, "its header is not a ruststash bundle's")
    digest = hashlib.sha256()
    while chunk := raw.read(CHUNK):
        digest.update(chunk)
    if digest.digest() != head[len(HEADER_PREFIX) :]:
        raise _damaged(path, "its checksum does not match its contents: it was altered or cut short")


def _read_members(store: Store, path: Path, gz: gzip.GzipFile, writers: dict[str, BlobWriter | None]) -> bytes:
    manifest_bytes: bytes | None = None
    listed: dict[str, int] = {}
    with tarfile.open(fileobj=gz, mode="r|") as tar:
        for member in tar:
            if not member.isreg():
                raise _damaged(path, f"{member.name!r} is not a regular file")
            source = tar.extractfile(member)
            assert source is not None  # a regular file always has one
            if manifest_bytes is None:
                if member.name != MANIFEST_NAME or member.size > MAX_MANIFEST_BYTES:
                    raise _damaged(path, f"it does not start with {MANIFEST_NAME}")
                manifest_bytes = source.read()
                listed = _listed_blobs(path, manifest_bytes)
            elif (m := _BLOB_MEMBER.fullmatch(member.name)) is not None:
                digest = m.group(1)
                if digest not in listed or digest in writers or listed[digest] != member.size:
                    raise _damaged(path, f"unexpected body {member.name}")
                writers[digest] = _receive_blob(store, path, digest, source)
            else:
                raise _damaged(path, f"unexpected member {member.name!r}")
    if manifest_bytes is None:
        raise _damaged(path, "it is empty")
    return manifest_bytes


def _listed_blobs(path: Path, manifest_bytes: bytes) -> dict[str, int]:
    try:
        blobs = json.loads(manifest_bytes).get("blobs")
    except (ValueError, AttributeError) as exc:
        raise _damaged(path, f"its manifest is not JSON ({exc})") from exc
    if not isinstance(blobs, dict) or not all(
        isinstance(k, str) and _DIGEST.fullmatch(k) and isinstance(v, int) and v >= 0 for k, v in blobs.items()
    ):
        raise _damaged(path, "its manifest's list of bodies is malformed")
    return blobs


def _receive_blob(store: Store, path: Path, digest: str, source: IO[bytes]) -> BlobWriter | None:
    """Hash one body (writing it to tmp/ unless the store has it); raise if it is not `digest`."""
    if store.has_blob(digest):
        hasher = hashlib.sha256()
        while chunk := source.read(CHUNK):
            hasher.update(chunk)
        actual = hasher.hexdigest()
        writer = None
    else:
        writer = store.writer()
        try:
            while chunk := source.read(CHUNK):
                writer.write(chunk)
            writer.finish()
        except BaseException:
            writer.abort()
            raise
        actual = writer.digest
    if actual != digest:
        if writer is not None:
            writer.abort()
        raise _damaged(path, f"body {digest} has sha256 {actual}")
    return writer


def _parse_manifest(path: Path, data: bytes) -> tuple[list[Entry], dict[str, str], dict[str, int]]:
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise _damaged(path, f"its manifest is not JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{path} is not a {BUNDLE_FORMAT!r} bundle (format {found!r}); nothing was imported")
    blobs = _listed_blobs(path, data)
    entries: list[Entry] = []
    seen: set[str] = set()
    raw_entries = manifest.get("entries")
    if not isinstance(raw_entries, list):
        raise _damaged(path, "its manifest has no list of entries")
    for raw in raw_entries:
        entry = _entry_from_json(raw)
        if entry is None:
            raise _damaged(path, f"malformed entry {str(raw)[:200]!r}")
        if entry.key in seen or blobs.get(entry.digest) != entry.size:
            raise _damaged(path, f"entry {entry.key} does not agree with the bodies listed")
        seen.add(entry.key)
        entries.append(entry)
    meta = manifest.get("meta", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and k.startswith(META_PREFIX) and isinstance(v, str) and _DIGEST.fullmatch(v)
        for k, v in meta.items()
    ):
        raise _damaged(path, "its meta facts are malformed")
    return entries, meta, blobs


def _entry_from_json(raw: object) -> Entry | None:
    if not isinstance(raw, dict):
        return None
    key, digest, size, status = raw.get("key"), raw.get("digest"), raw.get("size"), raw.get("status")
    headers, stored_at, lifetime = raw.get("headers"), raw.get("stored_at"), raw.get("lifetime")
    if not isinstance(key, str) or not (m := _KEY.fullmatch(key)) or m.group("kind") not in _BUNDLED_KINDS:
        return None
    if CREDENTIAL_MARK in key:
        return None  # entries kept per credential are never shared
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        return None
    if not isinstance(size, int) or size < 0 or not isinstance(status, int) or not 100 <= status <= 599:
        return None
    if not isinstance(headers, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in headers
    ):
        return None
    if not isinstance(stored_at, int | float) or not (lifetime is None or isinstance(lifetime, int | float)):
        return None
    return Entry(
        key=key,
        digest=digest,
        size=size,
        status=status,
        headers=tuple((h[0], h[1]) for h in headers),
        stored_at=float(stored_at),
        lifetime=math.inf if lifetime is None else float(lifetime),
    )


def _body(store: Store, digest: str, writers: dict[str, BlobWriter | None]) -> bytes:
    writer = writers.get(digest)
    return (writer.path if writer is not None else store.blob_path(digest)).read_bytes()


def _check_contents(
    store: Store, path: Path, entries: list[Entry], meta: dict[str, str], writers: dict[str, BlobWriter | None]
) -> None:
    """The checks live traffic gets, on what the bundle holds."""
    by_key = {entry.key: entry for entry in entries}
    facts: dict[str, str] = {}
    for entry in entries:
        kind, rest = entry.key.split(":", 1)
        if entry.status != 200:
            continue
        if kind == Kind.MANIFEST.value:
            host = rest.split("/", 1)[0]
            try:
                hashes = archive_hashes(_body(store, entry.digest, writers))
            except ValueError as exc:
                raise _damaged(path, f"{entry.key} is not a channel manifest ({exc})") from exc
            facts.update({f"{META_PREFIX}{host}{archive}": digest for archive, digest in hashes.items()})
        elif kind == Kind.INDEX.value:
            if problem := sparse_index.index_file_problem(_body(store, entry.digest, writers)):
                raise _damaged(path, f"{entry.key} is not an index file ({problem})")
        elif kind == Kind.CONFIG.value and (
            problem := sparse_index.config_problem(_body(store, entry.digest, writers))
        ):
            raise _damaged(path, f"{entry.key} is not a registry config.json ({problem})")
    for key, value in meta.items():
        if facts.setdefault(key, value) != value:
            raise _damaged(path, f"{key} disagrees with the bundle's channel manifest")
    for entry in entries:
        kind, rest = entry.key.split(":", 1)
        if kind == Kind.CRATE.value:
            index_rest, _, version = rest.rpartition("/")
            index_entry = by_key.get(f"{Kind.INDEX.value}:{index_rest}")
            body = None
            if index_entry is not None:
                body = _body(store, index_entry.digest, writers)
            elif (stored := store.peek(f"{Kind.INDEX.value}:{index_rest}")) is not None and store.has_blob(
                stored.digest
            ):
                body = store.read(stored)
            cksum = sparse_index.published_cksum(body, version) if body is not None else None
            if cksum is not None and cksum != entry.digest:
                raise _damaged(path, f"{entry.key} does not match the cksum {cksum} its index publishes")
        elif kind == Kind.ARCHIVE.value:
            expected = facts.get(META_PREFIX + rest) or store.get_meta(META_PREFIX + rest)
            if expected is not None and expected != entry.digest:
                raise _damaged(path, f"{entry.key} does not match the sha256 {expected} its manifest gives")
    meta.clear()
    meta.update(facts)


def _commit(
    store: Store,
    path: Path,
    entries: list[Entry],
    meta: dict[str, str],
    blobs: dict[str, int],
    writers: dict[str, BlobWriter | None],
) -> ImportReport:
    report = ImportReport()
    chosen: list[Entry] = []
    for entry in entries:
        current = store.peek(entry.key)
        if current is None or not store.has_blob(current.digest):
            report.new += 1
        elif current.digest == entry.digest:
            report.present += 1
            continue
        elif entry.key.split(":", 1)[0] in IMMUTABLE_KINDS or entry.stored_at <= current.stored_at:
            report.kept += 1
            continue
        else:
            report.updated += 1
        chosen.append(entry)
    for digest in dict.fromkeys(entry.digest for entry in chosen):
        writer = writers.get(digest)
        if writer is not None:
            store.adopt(writer, digest)
            writers[digest] = None
            report.bodies += 1
            report.body_bytes += blobs[digest]
    new_meta = {key: value for key, value in meta.items() if store.get_meta(key) is None}
    store.put_entries(chosen, new_meta)
    report.meta = len(new_meta)
    return report
