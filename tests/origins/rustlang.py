"""A fake static.rust-lang.org: channel manifests, rust-installer archives and rustup self-update files.

Everything is served from a directory tree on disk laid out like the real server (``dist/``, ``rustup/``),
through `BackgroundServer` over TLS. Files are streamed (aiohttp `FileResponse`: Range → 206, ETag and
Last-Modified → 304), never held in memory. `FakeRustDist.publish` writes a release into the tree; publishing
a newer one later moves the channel pointers while older versions stay installable by number.

Every request is recorded (`requests`, `count`, `statuses`); `corrupt` serves a same-length, different copy of
a file; `set_fault` makes requests under a path prefix hang, stall, trickle, crawl through a slow link
(throttle), get truncated, reset or fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from aiohttp import web

from tests.origins.faults import (
    DEFAULT_THROTTLE_RATE,
    FAULT_MODES,
    Fault,
    FaultMode,
    Handler,
    Link,
    NoResponse,
    answer_before_body,
    close_connection,
)
from tests.origins.installer import (
    COMPONENTS,
    HOST_TRIPLE,
    ArchiveBuilder,
    BuiltArchive,
    Channel,
    Compression,
    Release,
)
from tests.origins.server import BackgroundServer
from tests.origins.tls import OriginTLS

UPSTREAM = "https://static.rust-lang.org"
DEFAULT_RUSTUP_VERSION = "1.29.0"
# Cache-Control like the real CDN: pointers (undated manifests, rustup release info) are short-lived,
# anything under a dated directory or a versioned rustup archive never changes.
SHORT_CACHE = "public, max-age=60"
LONG_CACHE = "public, max-age=31536000, immutable"
_DATED = re.compile(r"^/dist/\d{4}-\d{2}-\d{2}/|^/rustup/archive/")
_CONTENT_TYPES = {".xz": "application/x-xz", ".gz": "application/gzip", ".toml": "text/plain; charset=utf-8"}
_TEXT_SUFFIXES = (".sha256", ".asc", ".txt")

# The packages a release carries, in manifest order, and which are extensions of the `rust` package.
_RUST_COMPONENTS = ("rustc", "rust-std", "cargo", "rust-docs")
_RUST_EXTENSIONS = ("rustfmt-preview", "clippy-preview", "rust-src")
_RENAMES = {"clippy": "clippy-preview", "rustfmt": "rustfmt-preview"}
_PROFILES = {
    "minimal": ["rustc", "cargo", "rust-std", "rust-mingw"],
    "default": ["rustc", "cargo", "rust-std", "rust-mingw", "rust-docs", "rustfmt-preview", "clippy-preview"],
    "complete": [
        "rustc",
        "cargo",
        "rust-std",
        "rust-mingw",
        "rust-docs",
        "rustfmt-preview",
        "clippy-preview",
        "rust-src",
    ],
}


def cache_control_for(path: str) -> str:
    """The Cache-Control header for a URL path (long-lived only for immutable, dated files)."""
    return LONG_CACHE if _DATED.match(path) else SHORT_CACHE


def content_type_for(path: str) -> str:
    suffix = Path(path).suffix
    if suffix in _CONTENT_TYPES:
        return _CONTENT_TYPES[suffix]
    return "text/plain; charset=utf-8" if path.endswith(_TEXT_SUFFIXES) else "application/octet-stream"


# --------------------------------------------------------------------------------------------------
# Releases and manifests


@dataclass(frozen=True)
class PublishedRelease:
    """What `FakeRustDist.publish` wrote: URL paths of its manifests and its archives."""

    release: Release
    manifest_paths: tuple[str, ...]
    archives: Mapping[tuple[str, str], BuiltArchive]  # (pkg, target) -> archive; target "*" for rust-src

    @property
    def toolchain(self) -> str:
        """The name to install this exact release with: ``9.98.0``, ``nightly-2026-05-01``, ``beta-…``."""
        if self.release.channel == "stable":
            return self.release.version
        return f"{self.release.channel}-{self.release.date}"

    def archive_path(self, pkg: str, compression: Compression = "xz", target: str = HOST_TRIPLE) -> str:
        """The URL path of one archive, e.g. ``/dist/2026-04-14/rustc-9.98.0-x86_64-unknown-linux-gnu.tar.xz``."""
        if not COMPONENTS[pkg].per_target:
            target = "*"
        return f"/dist/{self.release.date}/{self.archives[pkg, target].file_names[compression]}"

    def archive_paths(self, compression: Compression = "xz") -> list[str]:
        return [f"/dist/{self.release.date}/{archive.file_names[compression]}" for archive in self.archives.values()]


def manifest_names(release: Release) -> list[str]:
    """The ``channel-rust-<name>.toml`` names a release is reachable as (stable: channel, X.Y.Z and X.Y)."""
    if release.channel != "stable":
        return [release.channel]
    major_minor = ".".join(release.version.split(".")[:2])
    return ["stable", release.version, major_minor]


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else f'"{key}"'


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def render_manifest(
    release: Release,
    archives: Mapping[tuple[str, str], BuiltArchive],
    combined: BuiltArchive,
    host: str = HOST_TRIPLE,
) -> str:
    """A manifest-version 2 channel manifest with the real one's shape, URLs pointing at static.rust-lang.org.

    ``archives`` maps (pkg, target) to its archive; the ``rust`` package (for ``host``) lists the host's
    components and, as extensions, rustfmt, clippy, rust-src and rust-std for every other target.
    """
    base = f"{UPSTREAM}/dist/{release.date}"
    lines = ['manifest-version = "2"', f'date = "{release.date}"', ""]

    def target_table(pkg: str, target: str, archive: BuiltArchive) -> None:
        lines.append(f"[pkg.{pkg}.target.{_toml_key(target)}]")
        lines.append("available = true")
        lines.append(f'url = "{base}/{archive.file_names["gz"]}"')
        lines.append(f'hash = "{archive.sha256["gz"]}"')
        lines.append(f'xz_url = "{base}/{archive.file_names["xz"]}"')
        lines.append(f'xz_hash = "{archive.sha256["xz"]}"')

    pkgs = sorted({pkg for pkg, _ in archives} | {"rust"})
    for pkg in pkgs:
        lines += [f"[pkg.{pkg}]", f'version = "{release.full_version}"', ""]
        if pkg == "rust":
            target_table("rust", host, combined)
            lines.append("")
            members = [(p, host, "components") for p in _RUST_COMPONENTS]
            members += [(p, host if COMPONENTS[p].per_target else "*", "extensions") for p in _RUST_EXTENSIONS]
            members += [("rust-std", t, "extensions") for p, t in sorted(archives) if p == "rust-std" and t != host]
            for member, target, kind in members:
                if (member, target) not in archives:
                    continue
                lines += [f"[[pkg.rust.target.{host}.{kind}]]", f'pkg = "{member}"', f'target = "{target}"']
                lines += [f"is_extension = {'true' if kind == 'extensions' else 'false'}", ""]
            continue
        for target in sorted(t for p, t in archives if p == pkg):
            target_table(pkg, target, archives[pkg, target])
            lines += ["components = []", "extensions = []", ""]
    for old, new in sorted(_RENAMES.items()):
        lines += [f"[renames.{old}]", f'to = "{new}"', ""]
    lines.append("[profiles]")
    lines += [f"{name} = {_toml_list(pkgs)}" for name, pkgs in _PROFILES.items()]
    return "\n".join(lines) + "\n"


_FAKE_SIGNATURE = (
    "-----BEGIN PGP SIGNATURE-----\n\niQIzBAABCgAdFiEEfakefakefakefakefakefakefakefakeFAKE=\n=FAKE\n"
    "-----END PGP SIGNATURE-----\n"
)


# --------------------------------------------------------------------------------------------------
# Request records and faults


@dataclass
class RequestRecord:
    """One request as the origin saw it, logged on arrival.

    ``status`` is None while the request is in flight and stays None when no response was sent (hang,
    reset, refuse); for a response cut short (truncate) it is the status that was announced.
    """

    method: str
    path: str
    headers: dict[str, str]
    time: float
    status: int | None = None
    fault: FaultMode | None = None

    @property
    def range(self) -> str | None:
        return self.headers.get("Range")

    @property
    def if_none_match(self) -> str | None:
        return self.headers.get("If-None-Match")

    @property
    def if_modified_since(self) -> str | None:
        return self.headers.get("If-Modified-Since")


_RECORD = web.RequestKey("ruststash_record", RequestRecord)


class FakeRustDist:
    """A fake static.rust-lang.org over TLS, serving ``workdir/www`` (see the module docstring)."""

    def __init__(
        self,
        tls: OriginTLS,
        workdir: Path,
        *,
        builder: ArchiveBuilder | None = None,
        host: str = HOST_TRIPLE,
        extra_std_targets: tuple[str, ...] = ("wasm32-unknown-unknown",),
        rustup_version: str | None = DEFAULT_RUSTUP_VERSION,
        start: bool = True,
        plain_http: bool = False,
    ) -> None:
        self.workdir = workdir
        self.root = workdir / "www"
        self.root.mkdir(parents=True, exist_ok=True)
        self._overrides_dir = workdir / "overrides"
        self.builder = builder or ArchiveBuilder()
        self.host = host
        self.extra_std_targets = extra_std_targets
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._overrides: dict[str, Path] = {}
        self._faults: dict[str, Fault] = {}
        self._hang_release = threading.Event()
        self._mounts: tuple[str, ...] = ()
        self.published: list[PublishedRelease] = []
        app = web.Application(middlewares=[self._middleware])
        app.on_response_prepare.append(self._on_prepare)
        app.router.add_get("/{tail:.*}", self._handle)
        self.server = BackgroundServer(app, None if plain_http else tls.server_context())
        if rustup_version is not None:
            self.publish_rustup(rustup_version)
        if start:
            self.start()

    # ---- lifecycle

    @property
    def url(self) -> str:
        """The origin's base URL: use it as RUSTUP_DIST_SERVER."""
        return self.server.url

    @property
    def update_root(self) -> str:
        """The value for RUSTUP_UPDATE_ROOT."""
        return f"{self.server.url}/rustup"

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        """Stop listening: clients get "connection refused" until `start`."""
        self.server.stop()

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> FakeRustDist:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- publishing

    def publish(
        self,
        version: str = "9.98.0",
        date: str = "2026-04-14",
        channel: Channel = "stable",
        *,
        pad_bytes: Mapping[str, int] | None = None,
        update_channel: bool = True,
    ) -> PublishedRelease:
        """Build (or reuse from the cache) and serve one release.

        Writes the archives (+ ``.sha256``) under ``dist/{date}/``, the manifests (+ ``.sha256``, ``.asc``) as
        ``dist/{date}/channel-rust-{name}.toml`` and ``dist/channel-rust-{name}.toml`` for every name in
        `manifest_names` (stable: ``stable``, ``X.Y.Z``, ``X.Y``). With ``update_channel=False`` the undated
        channel pointer (``dist/channel-rust-{channel}.toml``) is left alone. ``pad_bytes`` maps a manifest
        package name (e.g. ``rust-std``) to the size of incompressible padding added to its host archive.
        Archives are written before manifests, and each file atomically, so a client never sees a manifest
        whose archives are missing.
        """
        release = Release(version=version, date=date, channel=channel)
        pads = dict(pad_bytes or {})
        unknown = set(pads) - set(COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components in pad_bytes: {sorted(unknown)}")
        archives = self._build_archives(release, pads)
        combined = self.builder.combined(release, self.host)
        for archive in [*archives.values(), combined]:
            self._publish_archive(release.date, archive)
        manifest = render_manifest(release, archives, combined, self.host)
        paths: list[str] = []
        for name in manifest_names(release):
            paths.append(self._write_manifest(f"dist/{date}/channel-rust-{name}.toml", manifest))
            if name != channel or update_channel:
                paths.append(self._write_manifest(f"dist/channel-rust-{name}.toml", manifest))
        if update_channel:
            self._write_file(f"dist/channel-rust-{channel}-date.txt", f"{date}\n".encode())
            self._write_file(f"dist/channel-rust-{channel}-git-commit-hash.txt", f"{release.commit_hash}\n".encode())
        published = PublishedRelease(release=release, manifest_paths=tuple(paths), archives=archives)
        self.published.append(published)
        return published

    def publish_rustup(self, version: str = DEFAULT_RUSTUP_VERSION, init: bytes | None = None) -> None:
        """Serve rustup self-update files: ``rustup/release-stable.toml`` and both ``rustup-init`` paths.
        ``init`` is the rustup-init served (a real rustup binary works as one); default: a small script."""
        script = init or f'#!/bin/sh\necho "rustup-init {version} (fake, ruststash tests)"\n'.encode()
        for path in (f"rustup/archive/{version}/{self.host}/rustup-init", f"rustup/dist/{self.host}/rustup-init"):
            self._write_file(path, script, mode=0o755)
            digest = hashlib.sha256(script).hexdigest()
            self._write_file(f"{path}.sha256", f"{digest}  rustup-init\n".encode())
        self._write_file("rustup/release-stable.toml", f"schema-version = '1'\nversion = '{version}'\n".encode())

    def _build_archives(self, release: Release, pads: Mapping[str, int]) -> dict[tuple[str, str], BuiltArchive]:
        archives: dict[tuple[str, str], BuiltArchive] = {}
        for pkg, component in COMPONENTS.items():
            target = self.host if component.per_target else "*"
            archives[pkg, target] = self.builder.component(release, pkg, self.host, pads.get(pkg, 0))
        for target in self.extra_std_targets:
            archives["rust-std", target] = self.builder.component(release, "rust-std", target)
        return archives

    def _publish_archive(self, date: str, archive: BuiltArchive) -> None:
        for compression, name in archive.file_names.items():
            self._link_file(f"dist/{date}/{name}", archive.paths[compression])
            self._write_file(f"dist/{date}/{name}.sha256", f"{archive.sha256[compression]}  {name}\n".encode())

    def _write_manifest(self, relative: str, text: str) -> str:
        """Write a manifest with its ``.sha256`` (``<hex>  <file name>``) and ``.asc``; return its URL path."""
        data = text.encode()
        name = relative.rsplit("/", 1)[-1]
        self._write_file(f"{relative}.sha256", f"{hashlib.sha256(data).hexdigest()}  {name}\n".encode())
        self._write_file(f"{relative}.asc", _FAKE_SIGNATURE.encode())
        self._write_file(relative, data)
        return f"/{relative}"

    def _write_file(self, relative: str, data: bytes, mode: int = 0o644) -> None:
        """Atomically (re)place ``root/relative``."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        tmp.chmod(mode)
        os.replace(tmp, target)

    def _link_file(self, relative: str, source: Path) -> None:
        """Atomically place ``source`` at ``root/relative`` (hard link if possible, else copy)."""
        target = self.root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{threading.get_ident()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)

    def serve_below(self, prefix: str) -> None:
        """Serve the tree below the URL path ``prefix`` too (``/rust-static``), as some public mirrors do."""
        self._mounts = (*self._mounts, prefix.rstrip("/"))

    def tree_path(self, path: str) -> str:
        """A URL path with its mount prefix (see `serve_below`) taken off."""
        for mount in self._mounts:
            if path.startswith(mount + "/"):
                return path.removeprefix(mount)
        return path

    def file(self, path: str) -> Path:
        """The file on disk served for a URL path (ignoring `corrupt` overrides)."""
        return self.root / self.tree_path(path).lstrip("/")

    # ---- request log

    def requests(self, prefix: str = "/") -> list[RequestRecord]:
        """A snapshot of the recorded requests whose path starts with ``prefix``, oldest first."""
        with self._lock:
            return [replace(r, headers=dict(r.headers)) for r in self._records if r.path.startswith(prefix)]

    def count(self, path: str, status: int | None = None) -> int:
        """How many requests for exactly ``path`` (with that final ``status``, if given) arrived."""
        return sum(1 for r in self.requests(path) if r.path == path and (status is None or r.status == status))

    def counts(self) -> dict[str, int]:
        """Requests per path."""
        result: dict[str, int] = {}
        for record in self.requests():
            result[record.path] = result.get(record.path, 0) + 1
        return result

    def statuses(self, path: str) -> list[int | None]:
        """The statuses of the requests for exactly ``path``, oldest first."""
        return [r.status for r in self.requests(path) if r.path == path]

    def records(self) -> list[RequestRecord]:
        """Every recorded request, oldest first (same as ``requests()``)."""
        return self.requests()

    def count_prefix(self, path_prefix: str) -> int:
        return len(self.requests(path_prefix))

    def count_status(self, path_prefix: str, status: int | None) -> int:
        """How many requests under ``path_prefix`` ended with ``status`` (None: no response, or in flight)."""
        return sum(1 for r in self.requests(path_prefix) if r.status == status)

    def reset_counts(self) -> None:
        with self._lock:
            self._records.clear()

    # ---- corruption and faults

    def corrupt(self, path: str) -> None:
        """Serve a copy of ``path`` with the same length and different bytes (until `restore`)."""
        source = self.file(path)
        size = source.stat().st_size
        self._overrides_dir.mkdir(parents=True, exist_ok=True)
        copy = self._overrides_dir / hashlib.sha256(path.encode()).hexdigest()[:16]
        shutil.copyfile(source, copy)
        with copy.open("r+b") as file:
            for offset in sorted({size // 2, max(size - 1, 0)}):
                file.seek(offset)
                byte = file.read(1)
                file.seek(offset)
                file.write(bytes([byte[0] ^ 0xFF]))
        with self._lock:
            self._overrides[path] = copy

    def restore(self, path: str | None = None) -> None:
        """Undo `corrupt` for ``path``; without ``path`` undo every `corrupt` and `set_fault`."""
        with self._lock:
            if path is not None:
                self._overrides.pop(path, None)
                return
            self._overrides.clear()
        self.clear_faults()

    def set_fault(
        self,
        path_prefix: str,
        mode: FaultMode,
        *,
        delay: float = 2.0,
        chunk: int = 1024,
        times: int | None = None,
        hang_max: float = 300.0,
        rate: float = DEFAULT_THROTTLE_RATE,
    ) -> None:
        """Apply ``mode`` to requests whose path starts with ``path_prefix``; see `Fault`.

        The longest matching prefix wins; ``times`` limits how many requests it hits; ``rate`` (bytes per
        second) is for throttle.
        """
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}")
        link = Link(rate) if mode == "throttle" else None
        with self._lock:
            self._faults[path_prefix] = Fault(mode, delay, chunk, times, hang_max, rate, link)

    def clear_faults(self) -> None:
        """Remove every fault and end the hangs in progress."""
        with self._lock:
            self._faults.clear()
        release, self._hang_release = self._hang_release, threading.Event()
        release.set()

    def _take_fault(self, path: str) -> Fault | None:
        """The fault for ``path`` (longest prefix), consuming one of its ``remaining`` uses."""
        with self._lock:
            matches = [prefix for prefix in self._faults if path.startswith(prefix)]
            if not matches:
                return None
            prefix = max(matches, key=len)
            fault = self._faults[prefix]
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._faults[prefix]
            return fault

    # ---- serving (runs on the server's loop)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Log the request on arrival, then act out its fault (if any) or serve it."""
        record = RequestRecord(request.method, request.path, dict(request.headers), time.time())
        with self._lock:
            self._records.append(record)
        request[_RECORD] = record
        fault = self._take_fault(request.path)
        if fault is None:
            return await handler(request)
        record.fault = fault.mode
        try:
            return await self._apply_fault(fault, request, handler)
        except NoResponse as drop:
            close_connection(request, rst=drop.rst)
            raise asyncio.CancelledError() from None

    async def _on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Record the final status (FileResponse decides 200/206/304/416 only when preparing)."""
        record = request.get(_RECORD)
        if isinstance(record, RequestRecord):
            with self._lock:
                record.status = response.status

    def _resolve(self, path: str) -> Path | None:
        """The file to serve for a URL path: a `corrupt` override, else the tree; None if absent."""
        if any(part in ("..", "") for part in path.lstrip("/").split("/")):
            return None
        with self._lock:
            override = self._overrides.get(path)
        candidate = override or self.file(path)
        return candidate if candidate.is_file() and not candidate.name.startswith(".") else None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        file = self._resolve(request.path)
        if file is None:
            raise web.HTTPNotFound(text=f"no such file: {request.path}\n")
        path = self.tree_path(request.path)
        headers = {"Cache-Control": cache_control_for(path), "Content-Type": content_type_for(path)}
        return web.FileResponse(file, chunk_size=256 * 1024, headers=headers)

    async def _apply_fault(self, fault: Fault, request: web.Request, handler: Handler) -> web.StreamResponse:
        """See tests/origins/faults.py; a path without a file gets what acts before the body, or a 404."""
        answer = await answer_before_body(fault, request, handler, self._hang_release)
        if answer is not None:
            return answer
        file = self._resolve(request.path)
        if file is None:
            return await handler(request)  # 404
        return await self._stream_faulty(request, fault, file)

    async def _stream_faulty(self, request: web.Request, fault: Fault, file: Path) -> web.StreamResponse:
        """Stream ``file`` (honouring a single Range) slowly (trickle, throttle), partly (truncate) or altered
        (corrupt)."""
        size = (await asyncio.to_thread(file.stat)).st_size
        headers = {"Cache-Control": cache_control_for(self.tree_path(request.path)), "Accept-Ranges": "bytes"}
        start, stop, status = 0, size, 200
        with contextlib.suppress(ValueError):
            wanted = _byte_range(request.http_range, size)
            if wanted is not None:
                (start, stop), status = wanted, 206
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        response = web.StreamResponse(status=status, headers=headers)
        response.content_type = content_type_for(request.path).split(";")[0]
        response.content_length = stop - start
        await response.prepare(request)
        length = (stop - start) // 2 if fault.mode == "truncate" else stop - start
        chunk_size = fault.chunk if fault.mode == "trickle" else 1 << 16
        if fault.mode == "throttle":
            chunk_size = max(1, fault.chunk)
        link = (fault.link or Link(fault.rate)) if fault.mode == "throttle" else None
        offset = start
        try:
            for chunk in _read_chunks(file, start, length, chunk_size):
                if fault.mode == "corrupt":
                    chunk = _flip_middle_byte(chunk, offset, size)
                offset += len(chunk)
                if link is not None:
                    await asyncio.sleep(link.reserve(len(chunk)))
                await response.write(chunk)
                if fault.mode == "trickle":
                    await asyncio.sleep(fault.delay)
        except ConnectionError:  # the client went away mid-body
            raise asyncio.CancelledError() from None
        if fault.mode == "truncate":
            raise NoResponse()
        await response.write_eof()
        return response


def _byte_range(wanted: slice, size: int) -> tuple[int, int] | None:
    """[start, stop) of a parsed single Range header (aiohttp's `http_range`), or None for "everything"."""
    if wanted.start is None and wanted.stop is None:
        return None
    if wanted.start is not None and wanted.start < 0:  # suffix: the last N bytes
        return max(0, size + wanted.start), size
    start = wanted.start or 0
    stop = size if wanted.stop is None else min(size, wanted.stop)
    return (start, stop) if start < stop else None


def _flip_middle_byte(chunk: bytes, offset: int, size: int) -> bytes:
    """``chunk`` (at ``offset`` of a file of ``size`` bytes) with the file's middle byte inverted, if inside."""
    middle = size // 2
    if not offset <= middle < offset + len(chunk):
        return chunk
    index = middle - offset
    return chunk[:index] + bytes([chunk[index] ^ 0xFF]) + chunk[index + 1 :]


def _read_chunks(file: Path, start: int, length: int, chunk_size: int) -> Iterator[bytes]:
    with file.open("rb") as handle:
        handle.seek(start)
        while length > 0:
            chunk = handle.read(min(chunk_size, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk


__all__ = [
    "DEFAULT_RUSTUP_VERSION",
    "FAULT_MODES",
    "UPSTREAM",
    "FakeRustDist",
    "Fault",
    "FaultMode",
    "PublishedRelease",
    "RequestRecord",
    "cache_control_for",
    "manifest_names",
    "render_manifest",
]
