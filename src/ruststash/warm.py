"""`ruststash warm`: fill the cache ahead of time with what a set of Cargo.lock files and toolchains need,
through the same CacheService (the same rules and checks) as live traffic. Also the selection logic that
`export` shares: which keys a lockfile or a toolchain needs.

Facts (cargo 1.95): a lockfile's crates.io packages have `source = "registry+https://github.com/rust-lang/
crates.io-index"` (or `sparse+https://index.crates.io/` when the sparse URL is configured explicitly). To
re-resolve offline cargo reads `config.json` and the index file of every name in the graph; the index entry of
a version lists its dependencies (`deps`, each with `name`, or the real name in `package` when renamed).

Facts (rustup 1.29): a toolchain `stable`, `1.95`, `1.95.0`, `nightly-2026-05-01` is the manifest
`dist/[DATE/]channel-rust-CHANNEL.toml` (rustup asks for its `.sha256` first). A profile is a list of package
names in the manifest's `[profiles]`; the ones the `rust` package lists for the host (as components or
extensions) are installed, each from its `xz_url` when the manifest has one, else from `url`. Extra targets
add `rust-std` for that target. `--component` names go through `[renames]` (clippy -> clippy-preview).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import re
import sys
import tomllib
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from . import __version__, policy, sparse_index
from .errors import ConfigError
from .metrics import Metrics
from .policy import Kind
from .replies import ClientRequest, Outcome, Reply
from .service import CacheService
from .settings import CacheHost, Origin, Resilience
from .store import Store
from .upstream import Upstream, UpstreamMap, make_ssl_context

CRATES_IO_SOURCES = frozenset(
    {"registry+https://github.com/rust-lang/crates.io-index", "sparse+https://index.crates.io/"}
)
INDEX_HOST = "index.crates.io"
DL_HOST = "static.crates.io"
DIST_HOST = "static.rust-lang.org"
CONFIG_PATH = "/config.json"
# What cargo sends with sparse index requests.
CARGO_HEADERS = {"accept": "text/plain", "cargo-protocol": "version=1"}
PROFILES = ("minimal", "default", "complete")
DEFAULT_JOBS = 8
DEFAULT_TIMEOUT = 300.0


# ------------------------------------------------------------------------------------------- lockfiles


@dataclass(frozen=True, order=True)
class LockedCrate:
    name: str
    version: str
    checksum: str | None = None

    @property
    def label(self) -> str:
        return f"crate {self.name} {self.version}"


def read_lockfiles(paths: Iterable[Path]) -> list[LockedCrate]:
    """The crates.io packages of these Cargo.lock files, each once, in a stable order."""
    found: dict[tuple[str, str], LockedCrate] = {}
    for path in paths:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path} is not a Cargo.lock ({exc})") from exc
        packages = data.get("package", [])
        if not isinstance(packages, list):
            raise ConfigError(f"{path} is not a Cargo.lock (no [[package]] list)")
        for package in packages:
            if not isinstance(package, dict) or package.get("source") not in CRATES_IO_SOURCES:
                continue
            name, version, checksum = package.get("name"), package.get("version"), package.get("checksum")
            if not isinstance(name, str) or not isinstance(version, str):
                raise ConfigError(f"{path}: a crates.io package without a name or version")
            found.setdefault(
                (name, version), LockedCrate(name, version, checksum if isinstance(checksum, str) else None)
            )
    return sorted(found.values())


def index_file_path(name: str) -> str:
    return "/" + policy.index_path(name)


def config_key() -> str:
    return f"{Kind.CONFIG}:{INDEX_HOST}{CONFIG_PATH}"


def index_key(name: str) -> str:
    return f"{Kind.INDEX}:{INDEX_HOST}{index_file_path(name)}"


def crate_key(name: str, version: str) -> str:
    return f"{Kind.CRATE}:{INDEX_HOST}{index_file_path(name)}/{version}"


def crate_download_path(name: str, version: str) -> str:
    return f"/crates/{name}/{version}/download"


def dependency_names(index_file: bytes, version: str) -> set[str]:
    """Every crates.io crate the index entry of `version` depends on (any kind, target, optional or not)."""
    names: set[str] = set()
    for line in index_file.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("vers") != version:
            continue
        for dep in record.get("deps") or []:
            if not isinstance(dep, dict) or dep.get("registry") not in (None, *_CRATES_IO_INDEX_URLS):
                continue  # a dependency on another registry: not ours to fetch
            name = dep.get("package") or dep.get("name")
            if isinstance(name, str) and name:
                names.add(name)
    return names


_CRATES_IO_INDEX_URLS = ("https://github.com/rust-lang/crates.io-index", "sparse+https://index.crates.io/")


# ------------------------------------------------------------------------------------------- toolchains

_TOOLCHAIN = re.compile(
    r"^(?P<channel>stable|beta|nightly|[0-9]+\.[0-9]+(?:\.[0-9]+)?(?:-beta(?:\.[0-9]+)?)?)"
    r"(?:-(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2}))?"
    r"(?:-(?P<host>[a-z][a-z0-9_]*-[a-z0-9_.-]+))?$"
)


@dataclass(frozen=True)
class ToolchainSpec:
    name: str
    channel: str
    date: str | None
    host: str

    @property
    def manifest_path(self) -> str:
        dated = f"{self.date}/" if self.date else ""
        return f"/dist/{dated}channel-rust-{self.channel}.toml"

    @property
    def manifest_key(self) -> str:
        return policy.classify("GET", DIST_HOST, self.manifest_path, ()).key


def parse_toolchain(spec: str, default_host: str) -> ToolchainSpec:
    """`stable`, `beta`, `nightly`, `1.95`, `1.95.0`, `nightly-2026-05-01`, optionally `-<host triple>`."""
    m = _TOOLCHAIN.match(spec.strip())
    if not m:
        raise ConfigError(
            f"--toolchain {spec!r} is not a toolchain such as stable, beta, nightly, 1.95, 1.95.0 or nightly-2026-05-01"
        )
    return ToolchainSpec(spec.strip(), m.group("channel"), m.group("date"), m.group("host") or default_host)


def host_triple() -> str:
    """This machine's target triple, as rustup names it."""
    machine = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64", "i386": "i686", "i586": "i686", "armv7l": "armv7"}.get(
        machine, machine
    )
    system = platform.system()
    if system == "Darwin":
        return f"{arch}-apple-darwin"
    if system == "Windows":
        return f"{arch}-pc-windows-msvc"
    if system == "FreeBSD":
        return f"{arch}-unknown-freebsd"
    libc = "gnu" if platform.libc_ver()[0] in ("glibc", "") and not _is_musl() else "musl"
    if arch == "armv7":
        return f"armv7-unknown-linux-{libc}eabihf"
    if arch == "riscv64":
        return f"riscv64gc-unknown-linux-{libc}"
    return f"{arch}-unknown-linux-{libc}"


def _is_musl() -> bool:
    return platform.libc_ver()[0] == "" and any(Path("/lib").glob("ld-musl-*"))


@dataclass(frozen=True)
class ArchiveRef:
    """One archive rustup would download for a toolchain: its URL and the sha256 the manifest gives it."""

    pkg: str
    target: str
    host: str
    path: str
    sha256: str

    @property
    def key(self) -> str:
        return policy.classify("GET", self.host, self.path, ()).key

    @property
    def label(self) -> str:
        return f"archive {self.path.rsplit('/', 1)[-1]}"


@dataclass
class ArchiveSelection:
    archives: list[ArchiveRef] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def select_archives(
    manifest: bytes, host: str, targets: Sequence[str], components: Sequence[str], profile: str
) -> ArchiveSelection:
    """The archives rustup installs for `profile` + `components` on `host`, plus rust-std for `targets`."""
    selection = ArchiveSelection()
    try:
        data = tomllib.loads(manifest.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        selection.problems.append(f"the channel manifest is not TOML ({exc})")
        return selection
    packages = _table(data.get("pkg"))
    renames = {old: str(_table(new).get("to", old)) for old, new in _table(data.get("renames")).items()}
    profiles = _table(data.get("profiles"))
    rust = _table(_table(_table(packages.get("rust")).get("target")).get(host))
    if not rust:
        selection.problems.append(f"the channel manifest has no toolchain for {host}")
        return selection
    members = [
        (str(m.get("pkg")), str(m.get("target")))
        for m in [*_list(rust.get("components")), *_list(rust.get("extensions"))]
        if isinstance(m, dict)
    ]

    def member(name: str, target: str) -> tuple[str, str] | None:
        return next(((p, t) for p, t in members if p == name and t in (target, "*")), None)

    wanted: dict[tuple[str, str], None] = {}
    profile_packages = profiles.get(profile)
    if not isinstance(profile_packages, list):
        known = ", ".join(sorted(profiles)) or "none"
        selection.problems.append(f"the channel manifest has no profile {profile!r} (it has: {known})")
    else:
        for name in profile_packages:
            found = member(str(name), host)
            if found is not None:  # profile packages a host lacks (rust-mingw on Linux) are skipped, as rustup does
                wanted[found] = None
    for component in components:
        found = member(renames.get(component, component), host)
        if found is None:
            selection.problems.append(f"component {component}: the toolchain has none for {host}")
        else:
            wanted[found] = None
    for target in targets:
        if target == host:
            continue
        found = member("rust-std", target)
        if found is None:
            selection.problems.append(f"target {target}: the toolchain has no rust-std for it")
        else:
            wanted[found] = None
    for pkg, target in wanted:
        table = _table(_table(_table(packages.get(pkg)).get("target")).get(target))
        if table.get("available") is False or not table:
            selection.problems.append(f"{pkg} for {target} is not available in this toolchain")
            continue
        url, digest = table.get("xz_url"), table.get("xz_hash")
        if not isinstance(url, str) or not isinstance(digest, str):
            url, digest = table.get("url"), table.get("hash")
        if not isinstance(url, str) or not isinstance(digest, str):
            selection.problems.append(f"{pkg} for {target} has no download URL")
            continue
        parts = urlsplit(url)
        selection.archives.append(ArchiveRef(pkg, target, (parts.hostname or DIST_HOST).lower(), parts.path, digest))
    return selection


def _table(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


# ------------------------------------------------------------------------------------------- selection from the store


@dataclass
class KeySelection:
    """What `export` takes from the store: keys, meta facts, and what the selectors need but the store lacks."""

    keys: dict[str, None] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def select_from_store(
    store: Store,
    crates: Sequence[LockedCrate],
    toolchains: Sequence[ToolchainSpec],
    targets: Sequence[str],
    components: Sequence[str],
    profile: str,
) -> KeySelection:
    """The keys `warm` would fill for these selectors, as far as the store holds them (blocking)."""
    out = KeySelection()

    def want(key: str, what: str) -> None:
        entry = store.peek(key)
        if entry is None or not store.has_blob(entry.digest):
            out.missing.append(f"{what} ({key})")
        else:
            out.keys[key] = None

    if crates:
        want(config_key(), "config.json")
        names: dict[str, None] = {}
        for crate in crates:
            names[crate.name.lower()] = None
        for crate in crates:
            key = index_key(crate.name)
            entry = store.peek(key)
            if entry is not None and store.has_blob(entry.digest):
                for dep in dependency_names(store.read(entry), crate.version):
                    names.setdefault(dep.lower(), None)
        for name in names:
            want(index_key(name), f"index file of {name}")
        for crate in crates:
            want(crate_key(crate.name, crate.version), crate.label)
    for spec in toolchains:
        key = spec.manifest_key
        entry = store.peek(key)
        if entry is None or not store.has_blob(entry.digest):
            out.missing.append(f"{spec.name} channel manifest ({key})")
            continue
        out.keys[key] = None
        selection = select_archives(store.read(entry), spec.host, targets, components, profile)
        out.missing.extend(f"{spec.name}: {problem}" for problem in selection.problems)
        for ref in selection.archives:
            out.meta[f"archive-sha256:{ref.host}{ref.path}"] = ref.sha256
            want(ref.key, f"{spec.name} {ref.label}")
    return out


# ------------------------------------------------------------------------------------------- warming


class Result(StrEnum):
    FETCHED = "fetched"
    CACHED = "cached"
    FAILED = "failed"


class Reporter(Protocol):
    def expect(self, count: int) -> None: ...

    def done(self, label: str, result: Result, detail: str = "") -> None: ...


@dataclass
class Tally:
    fetched: int = 0
    cached: int = 0
    failed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.fetched} fetched, {self.cached} already cached, {len(self.failed)} failed"


@dataclass(frozen=True)
class WarmPlan:
    crates: tuple[LockedCrate, ...] = ()
    toolchains: tuple[ToolchainSpec, ...] = ()
    targets: tuple[str, ...] = ()
    components: tuple[str, ...] = ()
    profile: str = "default"


@contextlib.asynccontextmanager
async def tool_service(
    cache_dir: Path,
    cache_hosts: tuple[CacheHost, ...],
    upstreams: dict[str, tuple[Origin, ...]],
    upstream_ca: Path | None,
    resilience: Resilience,
) -> AsyncIterator[CacheService]:
    """A CacheService on the store in `cache_dir` for a tool that runs beside (or instead of) a serving proxy:
    the store is opened without touching tmp/ (a running proxy may be writing there)."""
    ssl_context = make_ssl_context(upstream_ca)
    store = await asyncio.to_thread(Store, cache_dir, 0, clean_tmp=False)
    upstream_map = UpstreamMap(upstreams)
    metrics = Metrics(CollectorRegistry())
    upstream = Upstream(upstream_map, ssl_context, f"ruststash/{__version__} (warm)", resilience, metrics)
    await upstream.start()
    try:
        yield CacheService(store, upstream, cache_hosts, resilience, metrics)
    finally:
        await upstream.close()
        await asyncio.to_thread(store.close)


class Warmer:
    def __init__(self, service: CacheService, reporter: Reporter, jobs: int = DEFAULT_JOBS) -> None:
        self.service = service
        self.reporter = reporter
        self.tally = Tally()
        self._slots = asyncio.Semaphore(max(1, jobs))

    async def run(self, plan: WarmPlan) -> Tally:
        async with asyncio.TaskGroup() as group:
            if plan.crates:
                group.create_task(self.crates(plan.crates))
            for spec in plan.toolchains:
                group.create_task(self.toolchain(spec, plan.targets, plan.components, plan.profile))
        return self.tally

    # ---------------------------------------------------------------- one URL

    async def fetch(self, host: str, path: str, headers: dict[str, str] | None = None) -> Reply:
        """GET https://host/path through the service, as if a client asked; an archive download is waited
        for until it is stored (or has failed)."""
        request = ClientRequest("GET", "https", host, 443, path, dict(headers or {}))
        decision = self.service.decide(request)
        if decision.kind is Kind.PASS:
            return Reply(400, (), b"", Outcome.ERROR, f"https://{host}{path} is not something ruststash caches")
        async with self._slots:
            reply = await self.service.handle(decision, request)
            if reply.file is not None:
                reply.file.close()  # nothing is sent: the reply's digest is all warm needs
            if reply.fill is not None:
                fill = reply.fill
                while not fill.finished:
                    await fill.changed()
            return reply

    def record(self, label: str, result: Result, detail: str = "") -> None:
        if result is Result.FETCHED:
            self.tally.fetched += 1
        elif result is Result.CACHED:
            self.tally.cached += 1
        else:
            self.tally.failed.append(f"{label}: {detail}")
        self.reporter.done(label, result, detail)

    async def item(self, label: str, host: str, path: str, headers: dict[str, str] | None = None) -> Reply | None:
        """Fetch one URL and record how it went; the reply if its body is now stored, else None."""
        reply = await self.fetch(host, path, headers)
        result, detail = judge(reply)
        self.record(label, result, detail)
        return reply if result is not Result.FAILED else None

    # ---------------------------------------------------------------- crates

    async def crates(self, crates: Sequence[LockedCrate]) -> None:
        by_name: dict[str, list[LockedCrate]] = {}
        for crate in crates:
            by_name.setdefault(crate.name.lower(), []).append(crate)
        self.reporter.expect(1 + len(by_name) + len(crates))
        await self.item("config.json", INDEX_HOST, CONFIG_PATH, CARGO_HEADERS)
        seen = set(by_name)
        async with asyncio.TaskGroup() as group:
            for name, versions in by_name.items():
                group.create_task(self._index_and_crates(group, name, versions, seen))

    async def _index_and_crates(
        self, group: asyncio.TaskGroup, name: str, versions: list[LockedCrate], seen: set[str]
    ) -> None:
        reply = await self.item(f"index {name}", INDEX_HOST, index_file_path(name), CARGO_HEADERS)
        if reply is not None and any(sparse_index.published_cksum(reply.body, c.version) is None for c in versions):
            # A stored copy still fresh but older than a version the lockfile names: ask upstream once more,
            # as the proxy does for a crate its stored index file does not list.
            reply = await self._refreshed_index(name) or reply
        for crate in versions:
            if reply is None:
                self.record(crate.label, Result.FAILED, "its index file could not be fetched")
                continue
            cksum = sparse_index.published_cksum(reply.body, crate.version)
            if cksum is None:
                self.record(crate.label, Result.FAILED, "the index does not list this version")
                continue
            note = ""
            if crate.checksum is not None and crate.checksum != cksum:
                note = (
                    f"warning: Cargo.lock says checksum {crate.checksum}, the index says {cksum} "
                    "(cargo will refuse that lockfile)"
                )
            for dep in sorted(dependency_names(reply.body, crate.version)):
                if dep.lower() not in seen:
                    seen.add(dep.lower())
                    self.reporter.expect(1)
                    label = f"index {dep.lower()}"
                    group.create_task(self.item(label, INDEX_HOST, index_file_path(dep), CARGO_HEADERS))
            group.create_task(self._crate(crate, note))

    async def _refreshed_index(self, name: str) -> Reply | None:
        request = ClientRequest("GET", "https", INDEX_HOST, 443, index_file_path(name), dict(CARGO_HEADERS))
        decision = self.service.decide(request)
        async with self._slots:
            reply = await self.service.revalidating(decision, request, force=True)
        return reply if reply.status == 200 else None

    async def _crate(self, crate: LockedCrate, note: str) -> None:
        reply = await self.fetch(DL_HOST, crate_download_path(crate.name, crate.version))
        result, detail = judge(reply)
        self.record(crate.label, result, "; ".join(d for d in (detail, note) if d))

    # ---------------------------------------------------------------- toolchains

    async def toolchain(
        self, spec: ToolchainSpec, targets: Sequence[str], components: Sequence[str], profile: str
    ) -> None:
        self.reporter.expect(1)
        label = f"{spec.name} channel manifest"
        # As rustup asks: the .sha256 (which refreshes the stored pair if upstream has a new one), then the
        # .toml (answered from the pair just checked). One item: the pair.
        pair, detail = judge(await self.fetch(DIST_HOST, spec.manifest_path + ".sha256"))
        manifest = await self.fetch(DIST_HOST, spec.manifest_path) if pair is not Result.FAILED else None
        if manifest is not None and (verdict := judge(manifest))[0] is Result.FAILED:
            pair, detail = verdict
        self.record(label, pair, detail)
        if manifest is None or pair is Result.FAILED:
            return
        selection = await asyncio.to_thread(select_archives, manifest.body, spec.host, targets, components, profile)
        for problem in selection.problems:
            self.expect_and_record(f"{spec.name}", Result.FAILED, problem)
        self.reporter.expect(len(selection.archives))
        async with asyncio.TaskGroup() as group:
            for ref in selection.archives:
                group.create_task(self._archive(ref))

    def expect_and_record(self, label: str, result: Result, detail: str) -> None:
        self.reporter.expect(1)
        self.record(label, result, detail)

    async def _archive(self, ref: ArchiveRef) -> None:
        reply = await self.fetch(ref.host, ref.path)
        result, detail = judge(reply)
        if result is not Result.FAILED:
            digest = _stored_digest(reply)
            if digest is not None and digest != ref.sha256:
                result, detail = Result.FAILED, f"the stored body's sha256 {digest} is not the manifest's {ref.sha256}"
        self.record(ref.label, result, detail)


def _stored_digest(reply: Reply) -> str | None:
    if reply.fill is not None and reply.fill.entry is not None:
        return reply.fill.entry.digest
    if reply.file is not None:
        return reply.file.digest
    return None


def judge(reply: Reply) -> tuple[Result, str]:
    """Whether a reply means the body is now stored: fetched (from upstream), cached (it already was) or failed."""
    if reply.fill is not None:
        if reply.fill.entry is not None:
            return Result.FETCHED, ""
        return Result.FAILED, reply.fill.failure or "the download failed"
    if reply.forward:
        return Result.FAILED, reply.note or "not stored"
    if reply.status != 200:
        reason = reply.note or reply.body.decode("utf-8", "replace").strip().removeprefix("ruststash: ")
        return Result.FAILED, reason or f"status {reply.status}"
    if reply.note.startswith("not stored"):
        return Result.FAILED, reply.note
    if reply.outcome in (Outcome.HIT, Outcome.REVALIDATED):
        return Result.CACHED, ""
    if reply.outcome is Outcome.STALE:
        return Result.CACHED, f"kept the stored copy: {reply.note}"
    return Result.FETCHED, ""


# ------------------------------------------------------------------------------------------- progress


class PlainReporter:
    """One line per file (for logs and pipes)."""

    def __init__(self, out: Any = None) -> None:
        self._out = out or sys.stdout

    def expect(self, count: int) -> None:
        pass

    def done(self, label: str, result: Result, detail: str = "") -> None:
        line = f"{result.value:<7} {label}" + (f": {detail}" if detail else "")
        print(line, file=self._out, flush=True)

    def close(self) -> None:
        pass


class RichReporter:
    """A progress bar on a terminal (stderr); failures and stale copies are printed above it."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("[bold]warm[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=Console(stderr=True, highlight=False),
            transient=True,
        )
        self._task = self._progress.add_task("", total=0)
        self._progress.start()

    def expect(self, count: int) -> None:
        task = self._progress.tasks[0]
        self._progress.update(self._task, total=(task.total or 0) + count)

    def done(self, label: str, result: Result, detail: str = "") -> None:
        from rich.markup import escape

        self._progress.update(self._task, advance=1, description=escape(label))
        if result is Result.FAILED:
            self._progress.console.print(f"[red]failed[/red]  {escape(label)}: {escape(detail)}")
        elif detail:
            self._progress.console.print(f"[yellow]{result.value}[/yellow]  {escape(label)}: {escape(detail)}")

    def close(self) -> None:
        self._progress.stop()


def make_reporter(progress: bool | None = None) -> PlainReporter | RichReporter:
    """A progress bar when stderr is a terminal (or `progress` says so), plain lines otherwise."""
    if progress is None:
        progress = sys.stderr.isatty()
    return RichReporter() if progress else PlainReporter()


def warm_resilience(timeout: float) -> Resilience:
    """Warming is not interactive: wait for upstream as long as `timeout` rather than settle for a stale copy."""
    return Resilience(stale_after=timeout, miss_timeout=timeout, read_timeout=min(timeout, 60.0))
