"""`ruststash warm`: lockfile and toolchain selection, and fetching through the CacheService (in process,
against the local fake origins; no cargo, no rustup)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from ruststash.cli import main
from ruststash.errors import ConfigError
from ruststash.settings import build_cache_hosts, build_upstreams
from ruststash.store import Store
from ruststash.warm import (
    PlainReporter,
    Result,
    RichReporter,
    Tally,
    Warmer,
    WarmPlan,
    config_key,
    crate_key,
    dependency_names,
    host_triple,
    index_key,
    parse_toolchain,
    read_lockfiles,
    select_archives,
    tool_service,
    warm_resilience,
)
from tests.origins.crates_io import FakeCratesIo
from tests.origins.installer import HOST_TRIPLE
from tests.origins.registry import Registry
from tests.origins.rustlang import FakeRustDist, PublishedRelease
from tests.origins.tls import OriginTLS

WORKLOADS = Path(__file__).resolve().parents[2] / "shared" / "workloads"
MANIFEST_1_95 = (WORKLOADS / "channel-rust-1.95.0.toml").read_bytes()
LINUX = "x86_64-unknown-linux-gnu"
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"


# ---------------------------------------------------------------------------------------------- selection


def test_lockfile_packages_from_crates_io_only(tmp_path: Path) -> None:
    lock = tmp_path / "Cargo.lock"
    lock.write_text(
        "version = 4\n\n"
        '[[package]]\nname = "app"\nversion = "0.1.0"\ndependencies = ["serde"]\n\n'
        f'[[package]]\nname = "serde"\nversion = "1.0.200"\nsource = "{CRATES_IO}"\nchecksum = "{"a" * 64}"\n\n'
        '[[package]]\nname = "Inflector"\nversion = "0.11.4"\nsource = "sparse+https://index.crates.io/"\n\n'
        '[[package]]\nname = "gitdep"\nversion = "1.0.0"\nsource = "git+https://example.com/x#abc"\n\n'
        '[[package]]\nname = "private"\nversion = "1.0.0"\nsource = "sparse+https://registry.example.com/"\n'
    )
    other = tmp_path / "Other.lock"
    other.write_text(f'[[package]]\nname = "serde"\nversion = "1.0.200"\nsource = "{CRATES_IO}"\n')
    crates = read_lockfiles([lock, other])
    assert [(c.name, c.version) for c in crates] == [("Inflector", "0.11.4"), ("serde", "1.0.200")]
    assert crates[1].checksum == "a" * 64
    bad = tmp_path / "bad.lock"
    bad.write_text("[[package]\n")
    with pytest.raises(ConfigError, match=r"is not a Cargo.lock"):
        read_lockfiles([bad])


def test_keys_match_the_proxy_policy() -> None:
    assert config_key() == "config:index.crates.io/config.json"
    assert index_key("Serde") == "index:index.crates.io/se/rd/serde"
    assert crate_key("serde", "1.0.200") == "crate:index.crates.io/se/rd/serde/1.0.200"
    assert index_key("cc") == "index:index.crates.io/2/cc"


def test_dependency_names_cover_every_kind_and_follow_renames() -> None:
    deps = [
        {"name": "serde", "req": "^1", "kind": "normal"},
        {"name": "dev-only", "req": "^1", "kind": "dev"},
        {"name": "winapi", "req": "^0.3", "target": "cfg(windows)", "optional": True},
        {"name": "alias", "package": "real-name", "req": "^1"},
        {"name": "elsewhere", "req": "^1", "registry": "https://other.example.com/index"},
    ]
    body = (
        json.dumps({"name": "x", "vers": "1.0.0", "deps": deps, "cksum": "0" * 64}).encode()
        + b"\n"
        + json.dumps({"name": "x", "vers": "2.0.0", "deps": [{"name": "newer"}], "cksum": "1" * 64}).encode()
    )
    assert dependency_names(body, "1.0.0") == {"serde", "dev-only", "winapi", "real-name"}
    assert dependency_names(body, "2.0.0") == {"newer"}
    assert dependency_names(body, "3.0.0") == set()


@pytest.mark.parametrize(
    ("spec", "path", "host"),
    [
        ("stable", "/dist/channel-rust-stable.toml", "HOST"),
        ("beta", "/dist/channel-rust-beta.toml", "HOST"),
        ("nightly", "/dist/channel-rust-nightly.toml", "HOST"),
        ("1.95", "/dist/channel-rust-1.95.toml", "HOST"),
        ("1.95.0", "/dist/channel-rust-1.95.0.toml", "HOST"),
        ("nightly-2026-05-01", "/dist/2026-05-01/channel-rust-nightly.toml", "HOST"),
        ("stable-aarch64-apple-darwin", "/dist/channel-rust-stable.toml", "aarch64-apple-darwin"),
        ("1.95.0-x86_64-pc-windows-msvc", "/dist/channel-rust-1.95.0.toml", "x86_64-pc-windows-msvc"),
    ],
)
def test_toolchain_names(spec: str, path: str, host: str) -> None:
    parsed = parse_toolchain(spec, "HOST")
    assert (parsed.manifest_path, parsed.host) == (path, host)
    assert parsed.manifest_key == f"manifest:static.rust-lang.org{path}"


@pytest.mark.parametrize("spec", ["", "latest", "1", "stable-", "nightly-2026-5-1", "../etc"])
def test_bad_toolchain_names(spec: str) -> None:
    with pytest.raises(ConfigError, match="is not a toolchain"):
        parse_toolchain(spec, LINUX)


def test_host_triple_is_a_triple() -> None:
    assert host_triple().count("-") >= 2


def _names(selection_paths: list[str]) -> set[str]:
    return {path.rsplit("/", 1)[-1] for path in selection_paths}


def test_profiles_of_the_real_1_95_manifest() -> None:
    minimal = select_archives(MANIFEST_1_95, LINUX, [LINUX], [], "minimal")
    assert minimal.problems == []
    assert _names([a.path for a in minimal.archives]) == {
        f"{pkg}-1.95.0-{LINUX}.tar.xz" for pkg in ("rustc", "cargo", "rust-std")
    }
    assert {a.host for a in minimal.archives} == {"static.rust-lang.org"}
    assert all(a.key.startswith("archive:static.rust-lang.org/dist/2026-04-16/") for a in minimal.archives)
    default = select_archives(MANIFEST_1_95, LINUX, [LINUX], [], "default")
    assert {a.pkg for a in default.archives} == {
        "rustc",
        "cargo",
        "rust-std",
        "rust-docs",
        "rustfmt-preview",
        "clippy-preview",
    }
    complete = select_archives(MANIFEST_1_95, LINUX, [LINUX], [], "complete")
    assert {"rust-src", "llvm-tools-preview", "rust-analyzer-preview"} <= {a.pkg for a in complete.archives}
    windows = select_archives(MANIFEST_1_95, "x86_64-pc-windows-gnu", [], [], "minimal")
    assert "rust-mingw" in {a.pkg for a in windows.archives}  # in the profile, and present for that host


def test_components_renames_and_extra_targets() -> None:
    chosen = select_archives(
        MANIFEST_1_95,
        LINUX,
        [LINUX, "wasm32-unknown-unknown", "aarch64-apple-darwin"],
        ["clippy", "rust-src"],
        "minimal",
    )
    assert chosen.problems == []
    pairs = {(a.pkg, a.target) for a in chosen.archives}
    assert ("clippy-preview", LINUX) in pairs
    assert ("rust-src", "*") in pairs
    assert {("rust-std", "wasm32-unknown-unknown"), ("rust-std", "aarch64-apple-darwin")} <= pairs
    sha = {a.pkg: a.sha256 for a in chosen.archives if a.target == "*"}
    assert sha["rust-src"] == "67b09138c8db96afc4bbfc69ea771ac9a091fd777698acb43f6dfd9fb7dea363"  # the xz_hash


def test_selection_problems_are_reported() -> None:
    assert select_archives(MANIFEST_1_95, "sparc-unknown-nowhere", [], [], "minimal").problems
    odd = select_archives(MANIFEST_1_95, LINUX, ["no-such-target"], ["no-such-component"], "tiny")
    assert len(odd.problems) == 3
    assert select_archives(b"\xff not toml", LINUX, [], [], "minimal").problems


# ---------------------------------------------------------------------------------------------- warming


class Recorder:
    def __init__(self) -> None:
        self.expected = 0
        self.records: list[tuple[str, Result, str]] = []

    def expect(self, count: int) -> None:
        self.expected += count

    def done(self, label: str, result: Result, detail: str = "") -> None:
        self.records.append((label, result, detail))


def lockfile_of(registry: Registry, path: Path) -> Path:
    lines = ["version = 4", ""]
    for crate in registry.crates:
        lines += ["[[package]]", f'name = "{crate.name}"', f'version = "{crate.vers}"', f'source = "{CRATES_IO}"']
        lines += [f'checksum = "{crate.cksum}"', ""]
    path.write_text("\n".join(lines))
    return path


def upstreams(*pairs: tuple[str, str]) -> list[str]:
    return [f"{host}={url}" for host, url in pairs]


async def run_warm(cache: Path, origin_ca: Path, plan: WarmPlan, mapping: list[str]) -> tuple[Tally, Recorder]:
    recorder = Recorder()
    async with tool_service(
        cache, build_cache_hosts(()), build_upstreams(tuple(mapping)), origin_ca, warm_resilience(20)
    ) as service:
        tally = await Warmer(service, recorder, jobs=4).run(plan)
    return tally, recorder


@pytest.fixture
def dist(tmp_path: Path, origin_tls: OriginTLS) -> Iterator[FakeRustDist]:
    origin = FakeRustDist(origin_tls, tmp_path / "dist")
    yield origin
    origin.close()


@pytest.fixture
def release(dist: FakeRustDist) -> PublishedRelease:
    return dist.publish("9.98.0", "2026-04-14")


async def test_warm_crates_then_again_from_cache(
    tmp_path: Path, crates_origin: FakeCratesIo, origin_tls: OriginTLS
) -> None:
    registry = crates_origin.registry
    plan = WarmPlan(crates=tuple(read_lockfiles([lockfile_of(registry, tmp_path / "Cargo.lock")])))
    mapping = upstreams(("index.crates.io", crates_origin.index_url), ("static.crates.io", crates_origin.static_url))
    cache = tmp_path / "cache"
    tally, recorder = await run_warm(cache, origin_tls.ca_pem, plan, mapping)
    assert tally.failed == []
    names = {c.name.lower() for c in registry.crates}
    assert tally.fetched == 1 + len(names) + len(registry.crates) == recorder.expected
    downloads = [r.path for r in crates_origin.records("static") if r.status == 200]
    assert len(downloads) == len(set(downloads)) == len(registry.crates)
    store = Store(cache, clean_tmp=False)
    try:
        for crate in registry.crates:
            entry = store.peek(crate_key(crate.name, crate.vers))
            assert entry is not None and entry.digest == crate.cksum
        assert store.peek(config_key()) is not None
    finally:
        store.close()

    crates_origin.reset_counts()
    again, _ = await run_warm(cache, origin_tls.ca_pem, plan, mapping)
    assert (again.fetched, again.failed) == (0, [])
    assert again.cached == tally.fetched
    assert [r for r in crates_origin.records("static")] == []


async def test_warm_reports_failures(tmp_path: Path, crates_origin: FakeCratesIo, origin_tls: OriginTLS) -> None:
    registry = crates_origin.registry
    victim = registry.crates[0]
    crates_origin.corrupt_crate(victim.name, victim.vers)
    plan = WarmPlan(crates=tuple(read_lockfiles([lockfile_of(registry, tmp_path / "Cargo.lock")])))
    mapping = upstreams(("index.crates.io", crates_origin.index_url), ("static.crates.io", crates_origin.static_url))
    tally, recorder = await run_warm(tmp_path / "cache", origin_tls.ca_pem, plan, mapping)
    assert [f for f in tally.failed if f.startswith(f"crate {victim.name} {victim.vers}:")], tally.failed
    assert "is not the registry's cksum" in tally.failed[0]
    assert len(recorder.records) == recorder.expected

    crates_origin.stop()  # nothing stored for this one, and upstream gone: every file fails, each said why
    gone, recorder = await run_warm(tmp_path / "other", origin_tls.ca_pem, plan, mapping)
    assert gone.fetched == 0 and gone.failed and len(recorder.records) == recorder.expected


async def test_warm_toolchain_with_extra_target(
    tmp_path: Path, dist: FakeRustDist, release: PublishedRelease, origin_tls: OriginTLS
) -> None:
    spec = parse_toolchain("stable", HOST_TRIPLE)
    plan = WarmPlan(toolchains=(spec,), targets=(HOST_TRIPLE, "wasm32-unknown-unknown"), profile="minimal")
    mapping = upstreams(("static.rust-lang.org", dist.url))
    tally, recorder = await run_warm(tmp_path / "cache", origin_tls.ca_pem, plan, mapping)
    assert tally.failed == []
    wanted = {release.archive_path(p) for p in ("rustc", "cargo", "rust-std")}
    wanted.add(release.archive_path("rust-std", target="wasm32-unknown-unknown"))
    fetched = {r.path for r in dist.records() if r.path.endswith((".xz", ".gz"))}
    assert fetched == wanted
    assert [r.path for r in dist.records() if "channel-rust" in r.path][:1] == ["/dist/channel-rust-stable.toml.sha256"]
    store = Store(tmp_path / "cache", clean_tmp=False)
    try:
        for path in wanted:
            entry = store.peek(f"archive:static.rust-lang.org{path}")
            assert entry is not None
            assert entry.digest == hashlib.sha256(dist.file(path).read_bytes()).hexdigest()
    finally:
        store.close()
    assert tally.fetched == 1 + len(wanted) == recorder.expected


async def test_warm_toolchain_problems(
    tmp_path: Path, dist: FakeRustDist, release: PublishedRelease, origin_tls: OriginTLS
) -> None:
    plan = WarmPlan(
        toolchains=(parse_toolchain("stable", HOST_TRIPLE), parse_toolchain("nightly", HOST_TRIPLE)),
        targets=(HOST_TRIPLE,),
        components=("no-such-thing",),
        profile="minimal",
    )
    tally, recorder = await run_warm(
        tmp_path / "cache", origin_tls.ca_pem, plan, upstreams(("static.rust-lang.org", dist.url))
    )
    failed = "\n".join(tally.failed)
    assert "stable: component no-such-thing" in failed
    assert "nightly channel manifest:" in failed  # never published: 404
    assert tally.fetched == 4  # stable's manifest and its three archives
    assert len(recorder.records) == recorder.expected


def test_reporters_print_lines_or_a_bar() -> None:
    out = io.StringIO()
    plain = PlainReporter(out)
    plain.expect(2)
    plain.done("crate a 1.0.0", Result.FETCHED)
    plain.done("crate b 1.0.0", Result.FAILED, "why")
    assert out.getvalue() == "fetched crate a 1.0.0\nfailed  crate b 1.0.0: why\n"
    bar = RichReporter()
    bar.expect(2)
    bar.done("crate [a] 1.0.0", Result.CACHED, "stale")
    bar.done("crate b 1.0.0", Result.FAILED, "why")
    bar.close()


def test_warm_command_line_errors(tmp_path: Path) -> None:
    clean = {name: None for name in os.environ if name.startswith("RUSTSTASH_")}
    for args, message in (
        (["warm"], "name at least one Cargo.lock or --toolchain"),
        (["warm", "--toolchain", "latest"], "is not a toolchain"),
        (["warm", "--toolchain", "stable", "--upstream", "nonsense"], "is not HOST=URL"),
    ):
        result = CliRunner(env=clean).invoke(main, [*args, "--cache-dir", str(tmp_path / "c")])
        assert result.exit_code == 2, result.output
        assert message in result.stderr
    assert not (tmp_path / "c").exists()


async def test_a_version_published_after_the_index_was_stored(
    tmp_path: Path, edge_registry: Registry, origin_tls: OriginTLS
) -> None:
    newest = max(edge_registry.versions("memchr"), key=lambda c: [int(x) for x in c.vers.split(".")])
    origin = FakeCratesIo(edge_registry.without((newest.name, newest.vers)), origin_tls)
    try:
        mapping = upstreams(("index.crates.io", origin.index_url), ("static.crates.io", origin.static_url))
        older = [c for c in edge_registry.versions("memchr") if c is not newest]
        first = WarmPlan(crates=tuple(read_lockfiles([lockfile_of(Registry(tuple(older), ()), tmp_path / "a.lock")])))
        tally, _ = await run_warm(tmp_path / "cache", origin_tls.ca_pem, first, mapping)
        assert tally.failed == []
        origin.publish(newest)  # the stored index file is still fresh (max-age 600) but does not list it
        second = WarmPlan(crates=tuple(read_lockfiles([lockfile_of(Registry((newest,), ()), tmp_path / "b.lock")])))
        tally, recorder = await run_warm(tmp_path / "cache", origin_tls.ca_pem, second, mapping)
        assert tally.failed == []
        assert (f"crate memchr {newest.vers}", Result.FETCHED, "") in recorder.records
    finally:
        origin.close()


def test_every_option_of_the_tools_has_an_environment_variable() -> None:
    import click

    for name in ("warm", "export", "import", "stats", "ls", "purge"):
        command = main.commands[name]  # type: ignore[attr-defined]
        for param in command.params:
            if isinstance(param, click.Option) and param.name != "help":
                assert param.envvar and str(param.envvar).startswith("RUSTSTASH_"), (name, param.name)
                assert param.show_envvar, (name, param.name)
