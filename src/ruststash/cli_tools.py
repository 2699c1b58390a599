"""The operator tools' commands: warm, export, import, stats, ls, purge.

They work on the cache directory directly, whether or not a proxy is serving from it (they never empty its
tmp/). Registered on the `main` group of `cli`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .cli import CONTEXT, _clear_errors, cache_dir_option, data_dir_option, main, upstream_options
from .errors import ConfigError
from .settings import DEFAULT_ADMIN_LISTEN, build_cache_hosts, build_upstreams

if TYPE_CHECKING:
    from .inspect import Filter
    from .store import Store
    from .warm import Tally, ToolchainSpec

# Kept here rather than imported, so that `ruststash --help` does not pay for the tools' imports.
_PROFILES = ("minimal", "default", "complete")
_INSPECT_KINDS = ("config", "index", "crate", "manifest", "dist", "archive")
_DEFAULT_ADMIN_URL = f"http://{DEFAULT_ADMIN_LISTEN}"


def _human_size(n: int) -> str:
    from .inspect import human_size

    return human_size(n)


@dataclass(frozen=True)
class Selectors:
    """What `warm` fills and `export` takes, as given on the command line."""

    lockfiles: tuple[Path, ...]
    toolchains: tuple[str, ...]
    targets: tuple[str, ...]
    components: tuple[str, ...]
    profile: str

    @property
    def empty(self) -> bool:
        return not self.lockfiles and not self.toolchains

    @property
    def toolchain_specs(self) -> tuple[ToolchainSpec, ...]:
        return _toolchain_specs(self.toolchains)

    @property
    def target_triples(self) -> tuple[str, ...]:
        """--target, or this machine's host triple."""
        return _targets(self.targets)


_SELECTOR_PARAMETERS = ("lockfiles", "toolchains", "targets", "components", "profile")


def _selector_options(command: Callable[..., None]) -> Callable[..., None]:
    """The selector arguments and options, handed to `command` as one `selectors: Selectors`."""

    @functools.wraps(command)
    def packed(**kwargs: object) -> None:
        selectors = Selectors(**{name: kwargs.pop(name) for name in _SELECTOR_PARAMETERS})  # type: ignore[arg-type]
        command(selectors=selectors, **kwargs)

    options = [
        click.argument("lockfiles", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path)),
        click.option(
            "--toolchain",
            "toolchains",
            multiple=True,
            envvar="RUSTSTASH_TOOLCHAIN",
            show_envvar=True,
            metavar="SPEC",
            help="A toolchain as rustup names it: stable, beta, nightly, 1.95, 1.95.0, nightly-2026-05-01 "
            "(optionally followed by -HOST-TRIPLE). Repeatable.",
        ),
        click.option(
            "--target",
            "targets",
            multiple=True,
            envvar="RUSTSTASH_TARGET",
            show_envvar=True,
            metavar="TRIPLE",
            help="Also rust-std for this target (repeatable). Default: this machine's host triple only.",
        ),
        click.option(
            "--component",
            "components",
            multiple=True,
            envvar="RUSTSTASH_COMPONENT",
            show_envvar=True,
            metavar="NAME",
            help="A component on top of the profile (rust-src, clippy, llvm-tools, ...). Repeatable.",
        ),
        click.option(
            "--profile",
            envvar="RUSTSTASH_PROFILE",
            show_envvar=True,
            type=click.Choice(_PROFILES),
            default="default",
            show_default=True,
            help="The rustup profile whose components to take.",
        ),
    ]
    decorated: Callable[..., None] = packed
    for option in reversed(options):
        decorated = option(decorated)
    return decorated


def _open_existing_store(cache_dir: Path) -> Store:
    from .store import Store

    directory = cache_dir.expanduser().absolute()
    if not (directory / "FORMAT").exists():
        raise ConfigError(f"{directory} is not a ruststash store (see --cache-dir)")
    return Store(directory, clean_tmp=False)


def _toolchain_specs(toolchains: tuple[str, ...]) -> tuple[ToolchainSpec, ...]:
    from .warm import host_triple, parse_toolchain

    host = host_triple()
    return tuple(parse_toolchain(spec, host) for spec in toolchains)


def _targets(targets: tuple[str, ...]) -> tuple[str, ...]:
    from .warm import host_triple

    return targets or (host_triple(),)


@main.command(context_settings=CONTEXT)
@_selector_options
@cache_dir_option("The store to fill (a proxy may be serving from it).")
@data_dir_option
@upstream_options
@click.option(
    "--jobs",
    "-j",
    envvar="RUSTSTASH_JOBS",
    show_envvar=True,
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Files fetched at the same time.",
)
@click.option(
    "--timeout",
    envvar="RUSTSTASH_WARM_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=1.0),
    default=300.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for upstream to answer for one file (a body may take longer while it keeps coming).",
)
@click.option(
    "--progress/--no-progress",
    envvar="RUSTSTASH_PROGRESS",
    show_envvar=True,
    default=None,
    help="A progress bar (default: when stderr is a terminal) or one line per file.",
)
def warm(
    selectors: Selectors,
    cache_dir: Path,
    data_dir: Path,
    upstreams: tuple[str, ...],
    upstream_ca: Path | None,
    jobs: int,
    timeout: float,
    progress: bool | None,
) -> None:
    """Fill the cache with what LOCKFILES (Cargo.lock) and --toolchain need, for offline use later.

    Every file goes through the same rules and checks as a client's request (a crate is stored only if it
    matches its index's cksum, an archive only if it matches its manifest). For each lockfile: config.json,
    the index file of every crates.io package and of every crate its locked versions depend on (so cargo
    can re-resolve offline), and every .crate. For each toolchain: the channel manifest and the archives
    rustup installs for --profile, --component and --target. Exit 1 if anything failed.
    """
    from .warm import Warmer, WarmPlan, make_reporter, read_lockfiles, tool_service, warm_resilience

    with _clear_errors():
        if selectors.empty:
            raise click.UsageError("name at least one Cargo.lock or --toolchain")
        plan = WarmPlan(
            crates=tuple(read_lockfiles(selectors.lockfiles)),
            toolchains=selectors.toolchain_specs,
            targets=selectors.target_triples,
            components=selectors.components,
            profile=selectors.profile,
        )
        upstream_map = build_upstreams(upstreams)
        ca_file = upstream_ca.expanduser().absolute() if upstream_ca else None
        directory = cache_dir.expanduser().absolute()
        reporter = make_reporter(progress)

        async def run() -> Tally:
            async with tool_service(
                directory, build_cache_hosts(()), upstream_map, ca_file, warm_resilience(timeout)
            ) as s:
                return await Warmer(s, reporter, jobs).run(plan)

        try:
            tally = asyncio.run(run())
        finally:
            reporter.close()
    click.echo(f"warm: {tally.summary()}")
    if tally.failed:
        for line in tally.failed[:50]:
            click.echo(f"failed: {line}", err=True)
        if len(tally.failed) > 50:
            click.echo(f"... and {len(tally.failed) - 50} more", err=True)
        sys.exit(1)


@main.command("export", context_settings=CONTEXT)
@_selector_options
@click.option(
    "--all",
    "everything",
    is_flag=True,
    envvar="RUSTSTASH_EXPORT_ALL",
    show_envvar=True,
    help="Everything in the cache (but entries kept per credential, which are never exported).",
)
@cache_dir_option("The store to export from (a proxy may be serving from it).")
@click.option(
    "--output",
    "-o",
    envvar="RUSTSTASH_OUTPUT",
    show_envvar=True,
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The bundle file to write (it appears whole or not at all).",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    envvar="RUSTSTASH_ALLOW_MISSING",
    show_envvar=True,
    help="Write the bundle even if the cache lacks some of what the selectors name.",
)
def export_command(
    selectors: Selectors,
    everything: bool,
    cache_dir: Path,
    output: Path,
    allow_missing: bool,
) -> None:
    """Write what the selectors name (as `warm` would fetch it), or --all, from the cache to one bundle file.

    The bundle holds the entries (keys, digests, headers), their bodies and the archive hashes learned from
    channel manifests. Carry it to another machine and `ruststash import` it there. Nothing is fetched:
    run `ruststash warm` with the same selectors first.
    """
    from .bundle import export_bundle, exportable_keys
    from .warm import read_lockfiles, select_from_store

    with _clear_errors():
        if everything and not selectors.empty:
            raise click.UsageError("--all takes no lockfiles or --toolchain")
        if not everything and selectors.empty:
            raise click.UsageError("name at least one Cargo.lock or --toolchain, or pass --all")
        crates = read_lockfiles(selectors.lockfiles)
        specs = selectors.toolchain_specs
        store = _open_existing_store(cache_dir)
        try:
            if everything:
                keys, meta = exportable_keys(store), store.meta_items("archive-sha256:")
            else:
                selection = select_from_store(
                    store, crates, specs, selectors.target_triples, selectors.components, selectors.profile
                )
                if selection.missing:
                    for line in selection.missing[:50]:
                        click.echo(f"not in the cache: {line}", err=True)
                    if len(selection.missing) > 50:
                        click.echo(f"... and {len(selection.missing) - 50} more", err=True)
                    if not allow_missing:
                        raise ConfigError(
                            f"{len(selection.missing)} selected files are not in the cache: run `ruststash warm` "
                            "with the same selectors first (or pass --allow-missing)"
                        )
                keys, meta = list(selection.keys), selection.meta
            report = export_bundle(store, keys, meta, output)
        finally:
            store.close()
    click.echo(
        f"wrote {output}: {report.entries} entries, {report.bodies} bodies "
        f"({_human_size(report.body_bytes)}; {_human_size(report.file_bytes)} compressed)"
    )


@main.command("import", context_settings=CONTEXT)
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@cache_dir_option("The store to import into (created if needed; a proxy may be serving from it).")
def import_command(bundle: Path, cache_dir: Path) -> None:
    """Check BUNDLE completely, then add what the cache lacks.

    Every byte is checked (the file's own checksum, each body's sha256, crates against their index's
    cksum, archives against their manifest) before anything is committed: a damaged bundle changes
    nothing. Entries the cache already holds are left alone (for index files and manifests, the newer
    copy wins), so importing again, or a newer bundle, is safe.
    """
    from .bundle import import_bundle
    from .store import Store

    with _clear_errors():
        store = Store(cache_dir.expanduser().absolute(), clean_tmp=False)
        try:
            report = import_bundle(store, bundle)
        finally:
            store.close()
    click.echo(report.summary())


@main.command(context_settings=CONTEXT)
@cache_dir_option("The store to describe.")
@click.option(
    "--admin",
    envvar="RUSTSTASH_ADMIN",
    show_envvar=True,
    default=_DEFAULT_ADMIN_URL,
    show_default=True,
    metavar="URL",
    help="The running proxy's admin server, for its counts since start.",
)
@click.option("--json", "as_json", is_flag=True, envvar="RUSTSTASH_JSON", show_envvar=True, help="Print JSON.")
def stats(cache_dir: Path, admin: str, as_json: bool) -> None:
    """Entries and bytes in the cache by kind, and the running proxy's hit ratio since it started."""
    from .inspect import fetch_proxy_stats, render_proxy_stats, render_store_stats, store_stats

    with _clear_errors():
        store = _open_existing_store(cache_dir)
        try:
            figures = store_stats(store)
        finally:
            store.close()
        proxy = fetch_proxy_stats(admin)
    if as_json:
        body: dict[str, object] = {"cache_dir": str(store.directory), **figures.to_json(), "proxy": None}
        if proxy is not None:
            body["proxy"] = {"admin": admin, "requests": proxy.requests, "hit_ratio": proxy.hit_ratio}
        click.echo(json.dumps(body, indent=2))
        return
    for line in render_store_stats(figures, str(store.directory)):
        click.echo(line)
    click.echo(render_proxy_stats(proxy, admin))


def _filter_options[F: Callable[..., object]](command: F) -> F:
    options = [
        click.argument("patterns", nargs=-1, metavar="[KEY-GLOB]..."),
        click.option(
            "--kind",
            "kinds",
            multiple=True,
            envvar="RUSTSTASH_KIND",
            show_envvar=True,
            type=click.Choice(_INSPECT_KINDS),
            help="Only entries of this kind (repeatable).",
        ),
        click.option(
            "--host",
            "hosts",
            multiple=True,
            envvar="RUSTSTASH_HOST",
            show_envvar=True,
            metavar="HOST",
            help="Only entries of this host (repeatable; crates count under their index's host).",
        ),
        click.option(
            "--older-than",
            envvar="RUSTSTASH_OLDER_THAN",
            show_envvar=True,
            metavar="AGE",
            help="Only entries stored longer ago than AGE (30d, 12h, 2w).",
        ),
        click.option(
            "--unused-for",
            envvar="RUSTSTASH_UNUSED_FOR",
            show_envvar=True,
            metavar="AGE",
            help="Only entries not served or stored for AGE.",
        ),
        cache_dir_option("The store to look into (a proxy may be serving from it)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _build_filter(
    patterns: tuple[str, ...],
    kinds: tuple[str, ...],
    hosts: tuple[str, ...],
    older_than: str | None,
    unused_for: str | None,
) -> Filter:
    from .inspect import Filter, parse_age

    return Filter(
        kinds=kinds,
        hosts=tuple(h.lower() for h in hosts),
        patterns=patterns,
        older_than=parse_age(older_than, "--older-than") if older_than else None,
        unused_for=parse_age(unused_for, "--unused-for") if unused_for else None,
    )


@main.command("ls", context_settings=CONTEXT)
@_filter_options
def ls_command(
    patterns: tuple[str, ...],
    kinds: tuple[str, ...],
    hosts: tuple[str, ...],
    older_than: str | None,
    unused_for: str | None,
    cache_dir: Path,
) -> None:
    """List cached entries: size, when stored, when last used, key. KEY-GLOB matches whole keys
    (`crate:*/serde/*`, `index:index.crates.io/*`)."""
    import time

    from .inspect import render_entry, selected, sorted_entries

    with _clear_errors():
        chosen = _build_filter(patterns, kinds, hosts, older_than, unused_for)
        store = _open_existing_store(cache_dir)
        try:
            entries = sorted_entries(selected(store, chosen))
        finally:
            store.close()
    now = time.time()
    for entry, accessed_at in entries:
        click.echo(render_entry(entry, accessed_at, now))
    total = sum(entry.size for entry, _ in entries)
    click.echo(f"{len(entries)} entries, {_human_size(total)}", err=True)


@main.command("purge", context_settings=CONTEXT)
@_filter_options
@click.option(
    "--all",
    "everything",
    is_flag=True,
    envvar="RUSTSTASH_PURGE_ALL",
    show_envvar=True,
    help="Select every entry (needed when no filter is given).",
)
@click.option(
    "--yes",
    is_flag=True,
    envvar="RUSTSTASH_PURGE_YES",
    show_envvar=True,
    help="Delete. Without it, only show what would be deleted.",
)
def purge_command(
    patterns: tuple[str, ...],
    kinds: tuple[str, ...],
    hosts: tuple[str, ...],
    older_than: str | None,
    unused_for: str | None,
    cache_dir: Path,
    everything: bool,
    yes: bool,
) -> None:
    """Remove entries (by kind, host, age, KEY-GLOB), then the bodies nothing else uses. A dry run unless --yes."""
    from .inspect import purge, purge_plan

    with _clear_errors():
        chosen = _build_filter(patterns, kinds, hosts, older_than, unused_for)
        if chosen.empty and not everything:
            raise click.UsageError("give a filter (--kind, --host, --older-than, --unused-for, KEY-GLOB) or --all")
        store = _open_existing_store(cache_dir)
        try:
            doomed, plan = purge_plan(store, chosen)
            if not yes:
                for entry in doomed:
                    click.echo(f"would remove {entry.key}")
                click.echo(
                    f"dry run: {plan.entries} entries, {plan.bodies} bodies, {_human_size(plan.freed)} would be "
                    "freed; pass --yes to delete"
                )
                return
            report = purge(store, [entry.key for entry in doomed])
        finally:
            store.close()
    click.echo(f"removed {report.entries} entries and {report.bodies} bodies, freed {_human_size(report.freed)}")
