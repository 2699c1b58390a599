"""A fake crates.io (sparse index + static downloads) over TLS, with a request log and fault controls.

Two listeners on 127.0.0.1, each a `BackgroundServer`:

- index (`index_url`): `/config.json` and sparse-index files at `Registry.index_path(name)` (lowercase),
  `text/plain`, strong ETag, Last-Modified, `Cache-Control: public,max-age=600`, 304 on a matching
  `If-None-Match` (or, without it, `If-Modified-Since`); unknown names are 404.
- static (`static_url`): `/crates/{name}/{version}/download` and `/crates/{name}/{name}-{version}.crate`
  (name case-sensitive, as on static.crates.io), `application/gzip`, immutable, ETag; anything else is 404.

Every request goes through one middleware that records it and applies a fault set with `set_fault` for the
longest matching path prefix (so new fault modes need only a branch in `_apply_fault`).
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web
from aiohttp.typedefs import Middleware

from .faults import (
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
from .registry import PublishedCrate, Registry, index_path
from .server import BackgroundServer
from .tls import OriginTLS

Site = Literal["index", "static"]

# A `dl` for proxy-less use: downloads go straight to this origin's static listener.
DIRECT_DL = "{static_url}/crates"
DEFAULT_CONFIG = {"dl": "https://static.crates.io/crates", "api": "https://crates.io"}
INDEX_CACHE_CONTROL = "public,max-age=600"
CRATE_CACHE_CONTROL = "public,max-age=31536000,immutable"


@dataclass(frozen=True)
class RequestRecord:
    """One request as the origin saw it. `status` is None when no response was sent (hang, reset, ...)."""

    site: Site
    method: str
    path: str
    status: int | None
    if_none_match: str | None
    if_modified_since: str | None
    fault: FaultMode | None
    time: float


def corrupted(data: bytes) -> bytes:
    """Different bytes of the same length (every byte inverted)."""
    return data.translate(_INVERT)


_INVERT = bytes(255 - i for i in range(256))


def _http_date(timestamp: float) -> str:
    return email.utils.formatdate(timestamp, usegmt=True)


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _etag_matches(header: str, etag: str) -> bool:
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def _not_modified_since(header: str, last_modified: float) -> bool:
    try:
        since = email.utils.parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError):
        return False
    return int(last_modified) <= since


@dataclass
class _State:
    """Everything mutable, guarded by `lock` (handlers run on the origin threads, tests on the main one)."""

    crates: list[PublishedCrate]
    modified: dict[str, float] = field(default_factory=dict)  # lowercase name -> last-modified
    corrupt: set[tuple[str, str]] = field(default_factory=set)
    faults: dict[tuple[Site, str], Fault] = field(default_factory=dict)
    records: list[RequestRecord] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeCratesIo:
    """A fake crates.io serving `registry` over TLS. `dl` overrides config.json's `dl` (default crates.io's);
    `{static_url}` in it is replaced by `static_url` (see `DIRECT_DL`). `index_cache_control` is what
    config.json and index files say (crates.io: `public,max-age=600`). With `conditional=False` validators
    are ignored and every response is a full 200 (so a fault applies to revalidations too).

    Started on construction; `stop()`/`start()` take both listeners down/up (same ports), `close()` ends it.
    """

    def __init__(
        self,
        registry: Registry,
        tls: OriginTLS,
        dl: str | None = None,
        index_cache_control: str = INDEX_CACHE_CONTROL,
        conditional: bool = True,
        plain_http: bool = False,
    ) -> None:
        self.registry = registry
        self.index_cache_control = index_cache_control
        self.conditional = conditional
        self._config = {**DEFAULT_CONFIG, **({"dl": dl} if dl else {})}
        start = time.time() - 3600
        self._state = _State(crates=list(registry.crates))
        self._state.modified = {c.name.lower(): start for c in registry.crates}
        self._hang_release = threading.Event()
        self._servers: dict[Site, BackgroundServer] = {
            "index": BackgroundServer(self._index_app(), None if plain_http else tls.server_context()),
            "static": BackgroundServer(self._static_app(), None if plain_http else tls.server_context()),
        }
        self.start()
        self._config["dl"] = self._config["dl"].replace("{static_url}", self.static_url)

    # ------------------------------------------------------------------------------------------- lifecycle

    @property
    def index_url(self) -> str:
        return self._servers["index"].url

    @property
    def static_url(self) -> str:
        return self._servers["static"].url

    @property
    def config(self) -> dict[str, str]:
        return dict(self._config)

    def start(self, site: Site | None = None) -> None:
        for name, server in self._servers.items():
            if site in (None, name):
                server.start()

    def stop(self, site: Site | None = None) -> None:
        """Stop listening (clients get "connection refused") and drop open connections."""
        self._release_hangs()
        for name, server in self._servers.items():
            if site in (None, name):
                server.stop()

    def close(self) -> None:
        self._release_hangs()
        for server in self._servers.values():
            server.close()

    # ------------------------------------------------------------------------------------------- content

    def publish(self, crate: PublishedCrate) -> None:
        """Add a version to the index (and its `.crate` to static) at runtime; bumps Last-Modified."""
        with self._state.lock:
            self._state.crates = [
                c for c in self._state.crates if (c.name.lower(), c.vers) != (crate.name.lower(), crate.vers)
            ]
            self._state.crates.append(crate)
            self._touch(crate.name)

    def yank(self, name: str, vers: str, yanked: bool = True) -> None:
        with self._state.lock:
            self._state.crates = [
                c.with_yanked(yanked) if (c.name.lower(), c.vers) == (name.lower(), vers) else c
                for c in self._state.crates
            ]
            self._touch(name)

    def _touch(self, name: str) -> None:
        previous = self._state.modified.get(name.lower(), 0.0)
        self._state.modified[name.lower()] = max(time.time(), previous + 1)

    def corrupt_crate(self, name: str, vers: str) -> None:
        """Serve different bytes of the same length for this `.crate` (until `restore`)."""
        with self._state.lock:
            self._state.corrupt.add((name, vers))

    def set_fault(
        self,
        path_prefix: str,
        mode: FaultMode,
        *,
        site: Site | None = None,
        delay: float = 2.0,
        chunk: int = 1024,
        times: int | None = None,
        hang_max: float = 300.0,
        rate: float = DEFAULT_THROTTLE_RATE,
    ) -> None:
        """Apply `mode` to requests whose path starts with `path_prefix` (on `site`, or both sites).

        The longest matching prefix wins; `times` limits how many requests it hits. See `Fault`
        (`rate`, bytes per second, is for throttle: one link shared by both sites when `site` is None).
        """
        if mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}")
        link = Link(rate) if mode == "throttle" else None
        with self._state.lock:
            for s in ("index", "static") if site is None else (site,):
                self._state.faults[(s, path_prefix)] = Fault(mode, delay, chunk, times, hang_max, rate, link)

    def clear_faults(self) -> None:
        with self._state.lock:
            self._state.faults.clear()
        self._release_hangs()

    def _release_hangs(self) -> None:
        """End the hangs in progress (requests that hang later wait on a fresh event)."""
        release, self._hang_release = self._hang_release, threading.Event()
        release.set()

    def restore(self) -> None:
        """Undo `corrupt_crate` and `set_fault` (published/yanked changes stay)."""
        with self._state.lock:
            self._state.corrupt.clear()
        self.clear_faults()

    # ------------------------------------------------------------------------------------------- request log

    def records(self, site: Site | None = None) -> list[RequestRecord]:
        with self._state.lock:
            return [r for r in self._state.records if site in (None, r.site)]

    def count(self, path: str, site: Site | None = None) -> int:
        """How many requests asked for exactly `path`."""
        return sum(1 for r in self.records(site) if r.path == path)

    def count_prefix(self, path_prefix: str, site: Site | None = None) -> int:
        return sum(1 for r in self.records(site) if r.path.startswith(path_prefix))

    def count_status(self, path_prefix: str, status: int | None, site: Site | None = None) -> int:
        """How many requests under `path_prefix` were answered with `status` (None: no response)."""
        return sum(1 for r in self.records(site) if r.path.startswith(path_prefix) and r.status == status)

    def statuses(self, path: str, site: Site | None = None) -> list[int | None]:
        return [r.status for r in self.records(site) if r.path == path]

    def reset_counts(self) -> None:
        with self._state.lock:
            self._state.records.clear()

    # ------------------------------------------------------------------------------------------- apps

    def _index_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware("index")])
        app.router.add_get("/config.json", self._config_json)
        app.router.add_get("/{path:.+}", self._index_file)
        return app

    def _static_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware("static")])
        app.router.add_get("/crates/{name}/{version}/download", self._download)
        app.router.add_get("/crates/{name}/{filename}", self._crate_file)
        return app

    async def _config_json(self, request: web.Request) -> web.StreamResponse:
        body = json.dumps(self._config).encode()
        return self._conditional(request, body, "application/json", self.index_cache_control, time.time() - 3600)

    async def _index_file(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        with self._state.lock:
            crates = [c for c in self._state.crates if index_path(c.name) == path]
            modified = self._state.modified.get(crates[0].name.lower(), 0.0) if crates else 0.0
        if not crates or path != path.lower():
            raise web.HTTPNotFound()
        body = b"".join(c.index_line() + b"\n" for c in crates)
        return self._conditional(request, body, "text/plain", self.index_cache_control, modified)

    async def _download(self, request: web.Request) -> web.StreamResponse:
        return self._serve_crate(request, request.match_info["name"], request.match_info["version"])

    async def _crate_file(self, request: web.Request) -> web.StreamResponse:
        name, filename = request.match_info["name"], request.match_info["filename"]
        prefix, suffix = f"{name}-", ".crate"
        if not (filename.startswith(prefix) and filename.endswith(suffix)):
            raise web.HTTPNotFound()
        return self._serve_crate(request, name, filename[len(prefix) : -len(suffix)])

    def _serve_crate(self, request: web.Request, name: str, version: str) -> web.StreamResponse:
        with self._state.lock:
            found = [c for c in self._state.crates if c.name == name and c.vers == version]
            corrupt = (name, version) in self._state.corrupt
            modified = self._state.modified.get(name.lower(), 0.0)
        if not found:
            raise web.HTTPNotFound()
        data = found[0].data
        if corrupt:
            data = corrupted(data)
        return self._conditional(request, data, "application/gzip", CRATE_CACHE_CONTROL, modified)

    def _conditional(
        self, request: web.Request, body: bytes, content_type: str, cache_control: str, modified: float
    ) -> web.Response:
        headers = {
            "ETag": _etag(body),
            "Last-Modified": _http_date(modified),
            "Cache-Control": cache_control,
        }
        inm, ims = request.headers.get("If-None-Match"), request.headers.get("If-Modified-Since")
        matches = (inm is not None and _etag_matches(inm, headers["ETag"])) or (
            inm is None and ims is not None and _not_modified_since(ims, modified)
        )
        if self.conditional and matches:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type=content_type, headers=headers)

    # ------------------------------------------------------------------------------------------- faults

    def _take_fault(self, site: Site, path: str) -> Fault | None:
        with self._state.lock:
            matches = [(p, f) for (s, p), f in self._state.faults.items() if s == site and path.startswith(p)]
            if not matches:
                return None
            prefix, fault = max(matches, key=lambda m: len(m[0]))
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._state.faults[(site, prefix)]
            return fault

    def _record(self, site: Site, request: web.Request, status: int | None, fault: Fault | None) -> None:
        record = RequestRecord(
            site=site,
            method=request.method,
            path=request.path,
            status=status,
            if_none_match=request.headers.get("If-None-Match"),
            if_modified_since=request.headers.get("If-Modified-Since"),
            fault=fault.mode if fault else None,
            time=time.time(),
        )
        with self._state.lock:
            self._state.records.append(record)

    def _middleware(self, site: Site) -> Middleware:
        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            fault = self._take_fault(site, request.path)
            try:
                response = await (self._apply_fault(fault, request, handler) if fault else handler(request))
            except web.HTTPException as exc:
                self._record(site, request, exc.status, fault)
                raise
            except NoResponse as drop:
                self._record(site, request, None, fault)  # before the client can see the connection go
                close_connection(request, rst=drop.rst)
                raise asyncio.CancelledError() from None
            self._record(site, request, response.status, fault)
            return response

        return middleware

    async def _apply_fault(self, fault: Fault, request: web.Request, handler: Handler) -> web.StreamResponse:
        """See tests/origins/faults.py; throttle delays every response (404 and 304 too), and only a 200's
        body is trickled, truncated, corrupted or throttled."""
        answer = await answer_before_body(fault, request, handler, self._hang_release)
        if answer is not None:
            return answer
        response = await handler(request)
        if not isinstance(response, web.Response) or response.body is None or response.status != 200:
            return response
        body = bytes(response.body)  # type: ignore[arg-type]
        if fault.mode == "corrupt":
            response.body = corrupted(body)
            return response
        stream = web.StreamResponse(status=response.status, headers=response.headers)
        stream.content_length = len(body)
        await stream.prepare(request)
        if fault.mode == "truncate":
            await stream.write(body[: len(body) // 2])
            raise NoResponse()
        if fault.mode == "throttle":
            await _throttled(stream, body, fault.chunk, fault.link or Link(fault.rate))
            return stream
        for start in range(0, len(body), fault.chunk):  # trickle
            await stream.write(body[start : start + fault.chunk])
            await asyncio.sleep(fault.delay)
        await stream.write_eof()
        return stream


async def _throttled(stream: web.StreamResponse, body: bytes, chunk: int, link: Link) -> None:
    """Send `body` through `link`: each piece once the link has had the time to carry it."""
    step = max(1, chunk)
    try:
        for start in range(0, len(body), step):
            piece = body[start : start + step]
            await asyncio.sleep(link.reserve(len(piece)))
            await stream.write(piece)
        await stream.write_eof()
    except ConnectionError:  # the client went away mid-body: record it as unanswered
        raise NoResponse() from None


def proxy_upstream_args(origin: FakeCratesIo, tls: OriginTLS) -> list[str]:
    """`ruststash serve` options that send crates.io's two hosts to `origin` (whose certificates `tls` made)."""
    return [
        "--upstream",
        f"index.crates.io={origin.index_url}",
        "--upstream",
        f"static.crates.io={origin.static_url}",
        "--upstream-ca",
        str(tls.ca_pem),
    ]
