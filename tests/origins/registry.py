"""A fake crates.io registry made of real `.crate` files produced by real `cargo package`.

A `RegistrySpec` describes crate versions (dependencies, features, yanked flag, rust-version, size) and the
dependencies of a consumer project at the top of the graph. `build_registry` turns it into `.crate` files and
sparse-index lines, caching the result under a key derived from the spec, the cargo version and
`GENERATOR_VERSION`; the output is reproducible (same bytes for the same spec and cargo).

How packaging works: a workspace cannot hold two packages of one name, so crate versions are spread over
"rounds" (one workspace and one `cargo package --workspace --no-verify --allow-dirty` each). A crate goes in a
round after the rounds of all its dependencies' targets (the highest spec version each requirement accepts),
so every dependency is a plain version dependency that resolves against a tiny plain-HTTP sparse registry on
127.0.0.1 serving the earlier rounds (crates.io is source-replaced by it in the packaging CARGO_HOME; cargo
needs `--registry crates-io` to package against a replaced crates.io). Cargo's same-workspace overlay (path +
version dependencies) is not used: it does not apply when crates.io is source-replaced.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
import subprocess
import tempfile
import threading
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import pytest

from .clients import CRATES_IO_SOURCE, ConsumerDep, clean_env, real_cargo, run_cargo, source_replacement_toml

# Bump to invalidate every cached registry when the generator's output changes.
GENERATOR_VERSION = 1

DepKind = Literal["normal", "build", "dev"]


# ------------------------------------------------------------------------------- spec model


@dataclass(frozen=True)
class DepSpec:
    """A dependency as written in Cargo.toml and in the index.

    `name` is the key in Cargo.toml (the index line's `name`); `package` is the real crate name when the
    dependency is renamed (`foo = { package = "bar", ... }`), else None.
    """

    name: str
    req: str
    optional: bool = False
    default_features: bool = True
    features: tuple[str, ...] = ()
    target: str | None = None
    kind: DepKind = "normal"
    package: str | None = None

    @property
    def crate(self) -> str:
        """The name of the crate this dependency refers to."""
        return self.package or self.name

    @property
    def rust_name(self) -> str:
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class CrateSpec:
    """One crate version. `features` maps feature name to its values; `size` is the padding in bytes."""

    name: str
    version: str
    deps: tuple[DepSpec, ...] = ()
    features: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    yanked: bool = False
    rust_version: str | None = None
    size: int = 0

    @property
    def dir_name(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.version)


@dataclass(frozen=True)
class RegistrySpec:
    """Crate versions in publish order, and the dependencies of a consumer at the top of the graph."""

    crates: tuple[CrateSpec, ...]
    consumer: tuple[DepSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def digest(self) -> str:
        """A hash of the spec (and generator version) used as the cache key."""
        text = json.dumps(
            {"generator": GENERATOR_VERSION, "spec": self.to_json()}, sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------- semver (minimal)

_VERSION_RE = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?$")
_PARTIAL_RE = re.compile(r"^(\d+)(?:\.(\d+|\*))?(?:\.(\d+|\*))?(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int
    patch: int
    pre: tuple[tuple[int, int | str], ...]

    @classmethod
    def parse(cls, text: str) -> Version:
        m = _VERSION_RE.match(text)
        if m is None:
            raise ValueError(f"not a semver version: {text!r}")
        return cls(int(m[1]), int(m[2]), int(m[3]), _pre_key(m[4]))


def _pre_key(pre: str | None) -> tuple[tuple[int, int | str], ...]:
    """Sort key for a pre-release: no pre-release sorts after any pre-release."""
    if not pre:
        return ((2, 0),)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))


def _comparator_matches(comp: str, v: Version) -> bool:
    comp = comp.strip()
    m = re.match(r"^(\^|~|=|>=|<=|>|<)?\s*(.*)$", comp)
    assert m is not None
    op, rest = m[1] or "^", m[2]
    if rest in ("*", ""):
        return not _is_pre(v)
    p = _PARTIAL_RE.match(rest)
    if p is None:
        raise ValueError(f"unsupported version requirement: {comp!r}")
    major = int(p[1])
    minor = None if p[2] in (None, "*") else int(p[2])
    patch = None if p[3] in (None, "*") else int(p[3])
    low = Version(major, minor or 0, patch or 0, _pre_key(p[4]))
    if _is_pre(v) and (v.major, v.minor, v.patch) != (low.major, low.minor, low.patch):
        return False
    if op == "=":
        return low <= v < _bump(major, minor, patch, "=")
    if op == ">":
        return v > low if patch is not None else v >= _bump(major, minor, patch, "=")
    if op == ">=":
        return v >= low
    if op == "<":
        return v < low
    if op == "<=":
        return v < _bump(major, minor, patch, "=") if patch is None else v <= low
    return low <= v < _bump(major, minor, patch, op)


def _is_pre(v: Version) -> bool:
    return v.pre != ((2, 0),)


def _bump(major: int, minor: int | None, patch: int | None, op: str) -> Version:
    """The exclusive upper bound of `^`, `~` and `=` comparators (a floor below any pre-release)."""
    floor = ((0, 0),)
    if minor is None:
        return Version(major + 1, 0, 0, floor)
    if op in ("~", "=") and patch is None:
        return Version(major, minor + 1, 0, floor)
    if op == "~":
        return Version(major, minor + 1, 0, floor)
    if op == "=":
        assert patch is not None
        return Version(major, minor, patch + 1, floor)
    if major > 0:
        return Version(major + 1, 0, 0, floor)
    if minor > 0 or patch is None:
        return Version(0, minor + 1, 0, floor)
    return Version(0, 0, patch + 1, floor)


def req_matches(req: str, version: str) -> bool:
    """Whether cargo's version requirement `req` (`^1.2`, `=1.0.3`, `>=1, <2`, ...) matches `version`."""
    v = Version.parse(version)
    return all(_comparator_matches(c, v) for c in req.split(","))


def caret_req(version: str) -> str:
    """`^version` without build metadata (which cargo ignores in requirements, with a warning)."""
    return "^" + version.split("+", 1)[0]


# ------------------------------------------------------------------------------- index rules


def index_path(name: str) -> str:
    """The sparse-index path of a crate: `1/a`, `2/ab`, `3/a/abc`, `se/rd/serde` (lowercased)."""
    lower = name.lower()
    if len(lower) == 1:
        return f"1/{lower}"
    if len(lower) == 2:
        return f"2/{lower}"
    if len(lower) == 3:
        return f"3/{lower[0]}/{lower}"
    return f"{lower[:2]}/{lower[2:4]}/{lower}"


def _is_new_syntax(value: str) -> bool:
    return value.startswith("dep:") or "?/" in value


def split_features(
    features: Mapping[str, Sequence[str]],
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Split features as crates.io does: those using `dep:` or `?/` go to `features2`."""
    plain: dict[str, list[str]] = {}
    new: dict[str, list[str]] = {}
    for name, values in features.items():
        (new if any(_is_new_syntax(v) for v in values) else plain)[name] = list(values)
    return plain, new


def dep_entry(dep: DepSpec) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": dep.name,
        "req": dep.req,
        "features": list(dep.features),
        "optional": dep.optional,
        "default_features": dep.default_features,
        "target": dep.target,
        "kind": dep.kind,
    }
    if dep.package is not None:
        entry["package"] = dep.package
    return entry


def index_entry(crate: CrateSpec, cksum: str) -> dict[str, Any]:
    """The sparse-index JSON object of one published version (field order as crates.io writes it)."""
    features, features2 = split_features(crate.features)
    entry: dict[str, Any] = {
        "name": crate.name,
        "vers": crate.version,
        "deps": [dep_entry(d) for d in sorted(crate.deps, key=lambda d: (d.name, d.kind, d.target or ""))],
        "cksum": cksum,
        "features": features,
        "yanked": crate.yanked,
        "links": None,
    }
    if features2:
        entry["features2"] = features2
        entry["v"] = 2
    if crate.rust_version is not None:
        entry["rust_version"] = crate.rust_version
    return entry


def index_line(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(entry, separators=(",", ":")).encode()


# ------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class PublishedCrate:
    """A `.crate` file and its index entry."""

    name: str
    vers: str
    cksum: str
    path: Path
    entry: Mapping[str, Any]

    @property
    def yanked(self) -> bool:
        return bool(self.entry["yanked"])

    @property
    def data(self) -> bytes:
        return self.path.read_bytes()

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.vers}.crate"

    @property
    def download_path(self) -> str:
        """Path under a `dl` of `.../crates` when cargo appends its default `/{crate}/{version}/download`."""
        return f"/crates/{self.name}/{self.vers}/download"

    def index_line(self) -> bytes:
        return index_line(self.entry)

    def with_yanked(self, yanked: bool) -> PublishedCrate:
        return PublishedCrate(self.name, self.vers, self.cksum, self.path, {**self.entry, "yanked": yanked})


@dataclass(frozen=True)
class Registry:
    """Published crate versions (in publish order) and the consumer dependencies at the top of the graph."""

    crates: tuple[PublishedCrate, ...]
    consumer: tuple[DepSpec, ...]

    index_path = staticmethod(index_path)

    def names(self) -> list[str]:
        """Crate names (original case), each once, in first-publish order."""
        return list(dict.fromkeys(c.name for c in self.crates))

    def versions(self, name: str) -> list[PublishedCrate]:
        lower = name.lower()
        return [c for c in self.crates if c.name.lower() == lower]

    def get(self, name: str, vers: str) -> PublishedCrate:
        for crate in self.versions(name):
            if crate.vers == vers:
                return crate
        raise KeyError(f"{name} {vers}")

    def index_file(self, name: str) -> bytes:
        """The sparse-index file of `name`: one JSON line per version, in publish order."""
        crates = self.versions(name)
        if not crates:
            raise KeyError(name)
        return b"".join(c.index_line() + b"\n" for c in crates)

    def consumer_dependencies(self) -> list[tuple[str, str]]:
        """(name, req) of the consumer's dependencies (crate names; see `consumer_deps` for renames)."""
        return [(d.crate, d.req) for d in self.consumer]

    def consumer_deps(self) -> list[ConsumerDep]:
        """The consumer's dependencies, ready for `clients.write_consumer`."""
        return [ConsumerDep(d.name, d.req, d.package) for d in self.consumer]

    def without(self, *versions: tuple[str, str]) -> Registry:
        """This registry less some (name, vers) versions (to `publish` them at runtime later)."""
        drop = {(n.lower(), v) for n, v in versions}
        return Registry(tuple(c for c in self.crates if (c.name.lower(), c.vers) not in drop), self.consumer)

    def total_bytes(self) -> int:
        return sum(c.size for c in self.crates)


# ------------------------------------------------------------------------------- sizes & content


def default_size(name: str, version: str) -> int:
    """A deterministic, realistic padding size: mostly 8-90 KB, some 150-600 KB, a few 1-3 MB."""
    rng = random.Random(f"size:{name}:{version}")
    roll = rng.random()
    if roll < 0.90:
        return rng.randrange(8_000, 90_000)
    if roll < 0.98:
        return rng.randrange(150_000, 600_000)
    return rng.randrange(1_000_000, 3_000_000)


def _padding(name: str, version: str, size: int) -> bytes:
    return random.Random(f"pad:{name}:{version}").randbytes(size)


def _seed(name: str, version: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{name} {version}".encode()).digest()[:2], "big")


def _cfg_of_target(target: str | None) -> str | None:
    """`cfg(windows)` -> `windows`; None for no target; "false" for a plain target triple (never called)."""
    if target is None:
        return None
    if target.startswith("cfg(") and target.endswith(")"):
        return target[4:-1]
    return "any()"


def _enabling_feature(crate: CrateSpec, dep: DepSpec) -> str | None:
    """A feature that turns on optional `dep` (the implicit feature unless `dep:` syntax is used)."""
    explicit = [f for f, values in crate.features.items() if f"dep:{dep.name}" in values]
    if explicit:
        return explicit[0]
    uses_dep_syntax = any(f"dep:{dep.name}" in v for v in crate.features.values())
    return None if uses_dep_syntax else dep.name


def _calls(crate: CrateSpec, kinds: tuple[DepKind, ...]) -> list[str]:
    lines = []
    for dep in crate.deps:
        if dep.kind not in kinds:
            continue
        cfgs = []
        if dep.optional:
            feature = _enabling_feature(crate, dep)
            if feature is None:
                continue
            cfgs.append(f'feature = "{feature}"')
        target_cfg = _cfg_of_target(dep.target)
        if target_cfg is not None:
            cfgs.append(target_cfg)
        call = f"w = w.wrapping_add({dep.rust_name}::weight());"
        if cfgs:
            lines.append(f"    #[cfg(all({', '.join(cfgs)}))]")
            lines.append(f"    {{ {call} }}")
        else:
            lines.append(f"    {call}")
    return lines


def lib_rs(crate: CrateSpec) -> str:
    """A lib.rs exporting `weight()`, which calls `weight()` of every dependency that is compiled in."""
    return "\n".join(
        [
            f"//! {crate.name} {crate.version}: a generated test crate.",
            "",
            f"pub const SEED: u64 = {_seed(crate.name, crate.version)};",
            "",
            "pub fn weight() -> u64 {",
            "    #[allow(unused_mut)]",
            "    let mut w = SEED;",
            *_calls(crate, ("normal",)),
            "    w",
            "}",
            "",
        ]
    )


def build_rs(crate: CrateSpec) -> str | None:
    calls = _calls(crate, ("build",))
    if not calls:
        return None
    return "\n".join(
        [
            "fn main() {",
            "    #[allow(unused_mut)]",
            "    let mut w = 0u64;",
            *calls,
            "    let _ = w;",
            "}",
            "",
        ]
    )


def _toml_str(value: str) -> str:
    return json.dumps(value)


def _dep_table(dep: DepSpec) -> str:
    parts = [f"version = {_toml_str(dep.req)}"]
    if dep.package is not None:
        parts.append(f"package = {_toml_str(dep.package)}")
    if dep.optional:
        parts.append("optional = true")
    if not dep.default_features:
        parts.append("default-features = false")
    if dep.features:
        parts.append(f"features = [{', '.join(_toml_str(f) for f in dep.features)}]")
    return f"{_toml_str(dep.name)} = {{ {', '.join(parts)} }}"


def _edition(crate: CrateSpec) -> str:
    """2021, or 2018 for a rust-version older than 1.56 (which edition 2021 requires)."""
    if crate.rust_version is None:
        return "2021"
    major, minor = (int(x) for x in crate.rust_version.split(".")[:2])
    return "2021" if (major, minor) >= (1, 56) else "2018"


def cargo_toml(crate: CrateSpec) -> str:
    """The package manifest (every dependency a registry dependency)."""
    lines = [
        "[package]",
        f"name = {_toml_str(crate.name)}",
        f"version = {_toml_str(crate.version)}",
        f"edition = {_toml_str(_edition(crate))}",
        f"description = {_toml_str(f'Generated test crate {crate.name} {crate.version}')}",
        'license = "MIT OR Apache-2.0"',
        f"homepage = {_toml_str(f'https://example.invalid/{crate.name}')}",
    ]
    if crate.rust_version is not None:
        lines.append(f"rust-version = {_toml_str(crate.rust_version)}")
    sections: dict[str, list[str]] = {}
    for dep in crate.deps:
        table = {"normal": "dependencies", "build": "build-dependencies", "dev": "dev-dependencies"}[dep.kind]
        header = f"[target.{_toml_str(dep.target)}.{table}]" if dep.target else f"[{table}]"
        sections.setdefault(header, []).append(_dep_table(dep))
    for header, entries in sections.items():
        lines += ["", header, *entries]
    if crate.features:
        lines += ["", "[features]"]
        for fname, values in crate.features.items():
            lines.append(f"{_toml_str(fname)} = [{', '.join(_toml_str(v) for v in values)}]")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- rounds


def _target_of(dep: DepSpec, by_name: Mapping[str, list[CrateSpec]]) -> CrateSpec:
    """The highest version in the spec that `dep` accepts."""
    candidates = [c for c in by_name.get(dep.crate, []) if req_matches(dep.req, c.version)]
    if not candidates:
        raise ValueError(f"no crate in the spec matches {dep.crate} {dep.req}")
    return max(candidates, key=lambda c: Version.parse(c.version))


def plan_rounds(crates: Sequence[CrateSpec]) -> list[list[CrateSpec]]:
    """Assign crate versions to packaging rounds.

    Every version's dependency targets are packaged in the same round or an earlier one, and no round holds
    two versions of one name. Raises ValueError on a dependency cycle or an unsatisfiable requirement.
    """
    by_name: dict[str, list[CrateSpec]] = {}
    for crate in crates:
        by_name.setdefault(crate.name, []).append(crate)
    rounds: dict[tuple[str, str], int] = {}
    used: dict[str, set[int]] = {}
    visiting: set[tuple[str, str]] = set()

    def assign(crate: CrateSpec) -> int:
        if crate.key in rounds:
            return rounds[crate.key]
        if crate.key in visiting:
            raise ValueError(f"dependency cycle through {crate.name} {crate.version}")
        visiting.add(crate.key)
        floor = max((assign(_target_of(d, by_name)) + 1 for d in crate.deps), default=0)
        visiting.discard(crate.key)
        r = floor
        while r in used.setdefault(crate.name, set()):
            r += 1
        used[crate.name].add(r)
        rounds[crate.key] = r
        return r

    for crate in crates:
        assign(crate)
    out: list[list[CrateSpec]] = [[] for _ in range(max(rounds.values(), default=-1) + 1)]
    for crate in crates:
        out[rounds[crate.key]].append(crate)
    return out


class _RoundsIndex:
    """A plain-HTTP sparse registry on 127.0.0.1 serving the crates of earlier rounds to `cargo package`."""

    def __init__(self) -> None:
        self._files: dict[str, bytes] = {}
        self._lock = threading.Lock()
        files, lock = self._files, self._lock

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with lock:
                    body = files.get(self.path.lstrip("/"))
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._files["config.json"] = json.dumps({"dl": f"{self.url}/dl/{{crate}}/{{version}}"}).encode()
        self._thread = threading.Thread(target=self._server.serve_forever, name="rounds-index", daemon=True)
        self._thread.start()

    def add(self, crate: PublishedCrate) -> None:
        with self._lock:
            path = index_path(crate.name)
            self._files[path] = self._files.get(path, b"") + crate.with_yanked(False).index_line() + b"\n"
            self._files[f"dl/{crate.name}/{crate.vers}"] = crate.data

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@contextmanager
def _rounds_index() -> Iterator[_RoundsIndex]:
    index = _RoundsIndex()
    try:
        yield index
    finally:
        index.close()


def _write_round(workspace: Path, round_crates: Sequence[CrateSpec]) -> None:
    members = []
    for crate in round_crates:
        pkg = workspace / crate.dir_name
        (pkg / "src").mkdir(parents=True)
        (pkg / "data").mkdir()
        (pkg / "Cargo.toml").write_text(cargo_toml(crate))
        (pkg / "src" / "lib.rs").write_text(lib_rs(crate))
        build = build_rs(crate)
        if build is not None:
            (pkg / "build.rs").write_text(build)
        (pkg / "data" / "blob.bin").write_bytes(_padding(crate.name, crate.version, crate.size))
        members.append(crate.dir_name)
    manifest = ["[workspace]", 'resolver = "2"', "members = ["]
    manifest += [f"    {_toml_str(m)}," for m in members]
    manifest += ["]", ""]
    (workspace / "Cargo.toml").write_text("\n".join(manifest))


def _package_round(
    workdir: Path,
    number: int,
    round_crates: Sequence[CrateSpec],
    index_url: str,
) -> list[tuple[CrateSpec, Path]]:
    workspace = workdir / f"round-{number}"
    _write_round(workspace, round_crates)
    home = workdir / f"home-{number}"
    cargo_home = home / "cargo"
    cargo_home.mkdir(parents=True)
    (cargo_home / "config.toml").write_text(source_replacement_toml(index_url, "rounds"))
    env = clean_env(home, cargo_home, {"CARGO_TARGET_DIR": str(workdir / f"target-{number}")})
    args = ["package", "--workspace", "--no-verify", "--allow-dirty", "--registry", "crates-io"]
    run_cargo(args, workspace, env, timeout=900)
    out = workdir / f"target-{number}" / "package"
    return [(c, out / f"{c.name}-{c.version}.crate") for c in round_crates]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_registry(spec: RegistrySpec, cache_dir: Path) -> Registry:
    """Package `spec` with real cargo (or load it from `cache_dir`) and return the registry.

    The cache entry is `cache_dir/registry-<key>/` (`manifest.json` and `crates/*.crate`), keyed by the spec,
    `GENERATOR_VERSION` and `cargo --version`; it is written atomically, so an interrupted build is redone.
    """
    key = _cache_key(spec)
    target = cache_dir / f"registry-{key}"
    if (target / "manifest.json").is_file():
        return _load(target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="registry-build-") as tmp:
        staging = Path(tempfile.mkdtemp(prefix=f".registry-{key}-", dir=cache_dir))
        try:
            _build_into(spec, Path(tmp), staging)
            try:
                staging.rename(target)
            except OSError:
                if not (target / "manifest.json").is_file():
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return _load(target)


def registry_cache_dir(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where tests keep built registries: pytest's cache dir when the cacheprovider plugin is on, else a
    directory beside pytest's numbered temporary roots (kept across runs, unlike the roots themselves)."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("ruststash-registries"))
    return tmp_path_factory.getbasetemp().parent / "ruststash-registries"


def _cache_key(spec: RegistrySpec) -> str:
    version = subprocess.run(
        [str(real_cargo()), "--version"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return hashlib.sha256(f"{spec.digest()}\n{version}".encode()).hexdigest()[:20]


def _build_into(spec: RegistrySpec, workdir: Path, out: Path) -> None:
    (out / "crates").mkdir()
    published: dict[tuple[str, str], PublishedCrate] = {}
    with _rounds_index() as rounds_index:
        for number, round_crates in enumerate(plan_rounds(spec.crates)):
            files = _package_round(workdir, number, round_crates, rounds_index.url)
            for crate, path in files:
                dest = out / "crates" / path.name
                shutil.copyfile(path, dest)
                cksum = _sha256_file(dest)
                published[crate.key] = PublishedCrate(crate.name, crate.version, cksum, dest, index_entry(crate, cksum))
                rounds_index.add(published[crate.key])
    manifest = {
        "crates": [
            {"file": published[c.key].path.name, "cksum": published[c.key].cksum, "entry": published[c.key].entry}
            for c in spec.crates
        ],
        "consumer": [asdict(d) for d in spec.consumer],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _load(directory: Path) -> Registry:
    manifest = json.loads((directory / "manifest.json").read_text())
    crates = []
    for item in manifest["crates"]:
        entry = item["entry"]
        path = directory / "crates" / item["file"]
        if not path.is_file():
            raise FileNotFoundError(path)
        crates.append(PublishedCrate(entry["name"], entry["vers"], item["cksum"], path, entry))
    consumer = tuple(DepSpec(**{**d, "features": tuple(d["features"])}) for d in manifest["consumer"])
    return Registry(tuple(crates), consumer)


# ------------------------------------------------------------------------------- specs


def _crate(
    name: str,
    version: str,
    *deps: DepSpec,
    features: Mapping[str, Sequence[str]] | None = None,
    yanked: bool = False,
    rust_version: str | None = None,
    size: int | None = None,
) -> CrateSpec:
    return CrateSpec(
        name=name,
        version=version,
        deps=tuple(deps),
        features={k: tuple(v) for k, v in (features or {}).items()},
        yanked=yanked,
        rust_version=rust_version,
        size=default_size(name, version) if size is None else size,
    )


def _dep(name: str, req: str, **kwargs: Any) -> DepSpec:
    if "features" in kwargs:
        kwargs["features"] = tuple(kwargs["features"])
    return DepSpec(name, req, **kwargs)


def edge_case_spec() -> RegistrySpec:
    """A small hand-written graph (names and versions after ripgrep's) covering the index's edge cases.

    - several versions of one name: memchr 2.5.0/2.7.4, anyhow 1.0.89/1.0.93, regex 1.11.1/1.12.0, and
      log 0.3.9/0.4.22 where log 0.3.9 depends on log ^0.4 (both end up in the consumer's graph);
    - a yanked newest version: regex 1.12.0 (cargo must pick 1.11.1);
    - `dep:` / `?/` features (features2, "v": 2): memchr 2.7.4, aho-corasick, regex-automata, regex, bstr;
      implicit optional-dependency features (v1): log 0.4.22, globset, Inflector;
    - a renamed dependency: grep-cli's `re = { package = "regex", version = "^1.10" }`;
    - target-specific dependencies: `cfg(windows)` on same-file, walkdir, winapi-util, termcolor, grep-cli
      (winapi-util and windows-sys are resolved and fetched, never compiled on Linux);
    - a mixed-case name: Inflector; a build dependency: Inflector -> cc; a dev dependency: regex -> anyhow;
    - rust_version on some versions; windows-sys is large (~2.5 MB).
    """
    win = "cfg(windows)"
    regex_deps = (
        _dep("aho-corasick", "^1.0.0", optional=True, default_features=False),
        _dep("memchr", "^2.6.0", optional=True, default_features=False),
        _dep("regex-automata", "^0.4.8", default_features=False, features=["alloc", "syntax"]),
        _dep("regex-syntax", "^0.8.5", default_features=False),
        _dep("anyhow", "^1.0.69", kind="dev"),
    )
    regex_features = {
        "default": ["std", "perf", "unicode"],
        "std": ["aho-corasick?/std", "memchr?/std", "regex-automata/std", "regex-syntax/std"],
        "perf": ["perf-literal"],
        "perf-literal": ["dep:aho-corasick", "dep:memchr", "regex-automata/perf-literal"],
        "unicode": ["regex-automata/unicode", "regex-syntax/unicode"],
        "logging": ["aho-corasick?/logging", "memchr?/logging", "regex-automata/logging"],
    }
    crates = [
        _crate(
            "serde",
            "1.0.210",
            features={"default": ["std"], "std": [], "alloc": [], "rc": []},
            rust_version="1.31",
        ),
        _crate(
            "log",
            "0.4.22",
            _dep("serde", "^1.0", optional=True, default_features=False),
            features={"std": [], "kv": [], "kv_serde": ["kv", "serde"]},
            rust_version="1.60.0",
        ),
        _crate("memchr", "2.5.0", features={"default": ["std"], "std": [], "use_std": ["std"]}),
        _crate(
            "memchr",
            "2.7.4",
            _dep("log", "^0.4.20", optional=True),
            features={"default": ["std"], "std": ["alloc"], "alloc": [], "logging": ["dep:log"]},
            rust_version="1.61",
        ),
        _crate(
            "aho-corasick",
            "1.1.3",
            _dep("memchr", "^2.4.0", optional=True, default_features=False),
            _dep("log", "^0.4.17", optional=True),
            features={
                "default": ["std", "perf-literal"],
                "std": ["memchr?/std"],
                "perf-literal": ["dep:memchr"],
                "logging": ["dep:log"],
            },
            rust_version="1.60.0",
        ),
        _crate(
            "regex-syntax",
            "0.8.5",
            features={
                "default": ["std", "unicode"],
                "std": [],
                "unicode": ["unicode-bool", "unicode-case"],
                "unicode-bool": [],
                "unicode-case": [],
            },
            rust_version="1.65",
        ),
        _crate("anyhow", "1.0.89", features={"default": ["std"], "std": []}, rust_version="1.39"),
        _crate(
            "regex-automata",
            "0.4.9",
            _dep("aho-corasick", "^1.0.0", optional=True, default_features=False),
            _dep("memchr", "^2.6.0", optional=True, default_features=False),
            _dep("regex-syntax", "^0.8.5", optional=True, default_features=False),
            _dep("log", "^0.4.14", optional=True),
            features={
                "default": ["std", "syntax", "perf", "unicode"],
                "std": ["regex-syntax?/std", "memchr?/std", "aho-corasick?/std", "alloc"],
                "alloc": [],
                "syntax": ["dep:regex-syntax", "alloc"],
                "perf": ["perf-literal"],
                "perf-literal": ["dep:aho-corasick", "dep:memchr"],
                "unicode": ["regex-syntax?/unicode"],
                "logging": ["dep:log", "aho-corasick?/logging", "memchr?/logging"],
            },
            rust_version="1.65",
        ),
        _crate("regex", "1.11.1", *regex_deps, features=regex_features, rust_version="1.65"),
        _crate("anyhow", "1.0.93", features={"default": ["std"], "std": []}, rust_version="1.39"),
        _crate("regex", "1.12.0", *regex_deps, features=regex_features, yanked=True, rust_version="1.65"),
        _crate(
            "bstr",
            "1.10.0",
            _dep("memchr", "^2.7.1", default_features=False),
            _dep("regex-automata", "^0.4.1", optional=True, default_features=False, features=["syntax"]),
            _dep("serde", "^1.0.85", optional=True, default_features=False),
            features={
                "default": ["std", "unicode"],
                "std": ["alloc", "memchr/std", "serde?/std"],
                "alloc": ["memchr/alloc", "serde?/alloc"],
                "unicode": ["dep:regex-automata"],
                "serde": ["dep:serde"],
            },
            rust_version="1.73",
        ),
        _crate(
            "windows-sys",
            "0.59.0",
            features={
                "Win32": [],
                "Win32_Foundation": ["Win32"],
                "Win32_Storage": ["Win32"],
                "Win32_Storage_FileSystem": ["Win32_Storage"],
                "Win32_System": ["Win32"],
                "Win32_System_Console": ["Win32_System"],
                "default": [],
            },
            size=2_500_000,
        ),
        _crate(
            "winapi-util",
            "0.1.9",
            _dep(
                "windows-sys",
                "^0.59.0",
                target=win,
                features=["Win32_Foundation", "Win32_Storage_FileSystem", "Win32_System_Console"],
            ),
        ),
        _crate("same-file", "1.0.6", _dep("winapi-util", "^0.1.1", target=win)),
        _crate(
            "walkdir",
            "2.5.0",
            _dep("same-file", "^1.0.1"),
            _dep("winapi-util", "^0.1.1", target=win),
            rust_version="1.60",
        ),
        _crate(
            "globset",
            "0.4.15",
            _dep("aho-corasick", "^1.1.1"),
            _dep("bstr", "^1.6.2", default_features=False, features=["std"]),
            _dep("log", "^0.4.20", optional=True),
            _dep("regex-automata", "^0.4.0", default_features=False, features=["std", "perf", "syntax"]),
            _dep("regex-syntax", "^0.8.0", default_features=False, features=["std"]),
            _dep("serde", "^1.0.188", optional=True),
            features={"default": ["log"], "simd-accel": [], "serde1": ["serde"]},
        ),
        _crate("termcolor", "1.4.1", _dep("winapi-util", "^0.1.3", target=win)),
        _crate("lexopt", "0.3.0"),
        _crate("lazy_static", "1.5.0", features={"spin_no_std": []}),
        _crate("cc", "1.1.31", features={"parallel": []}, size=450_000),
        _crate("log", "0.3.9", _dep("log", "^0.4"), features={"default": ["use_std"], "use_std": ["log/std"]}),
        _crate(
            "Inflector",
            "0.11.4",
            _dep("lazy_static", "^1.2.0", optional=True),
            _dep("regex", "^1.1", optional=True),
            _dep("log", "^0.3.9"),
            _dep("cc", "^1.0", kind="build"),
            features={"default": ["heavyweight"], "heavyweight": ["regex", "lazy_static"], "unstable": []},
        ),
        _crate(
            "grep-cli",
            "0.1.11",
            _dep("bstr", "^1.6.2"),
            _dep("globset", "^0.4.15"),
            _dep("log", "^0.4.20"),
            _dep("termcolor", "^1.3.0"),
            _dep("re", "^1.10", package="regex"),
            _dep("winapi-util", "^0.1.6", target=win),
            rust_version="1.72",
        ),
    ]
    consumer = (
        _dep("grep-cli", "^0.1"),
        _dep("walkdir", "^2"),
        _dep("Inflector", "^0.11"),
        _dep("lexopt", "^0.3"),
        _dep("anyhow", "^1"),
        _dep("regex", "^1"),
    )
    return RegistrySpec(tuple(crates), consumer)


def _lock_dep(entry: str, versions: Mapping[str, list[str]]) -> tuple[str, str] | None:
    """(name, version) of a lock `dependencies` entry ("name", "name version" or "name version (source)").

    None when it names no registry package (a path or git package).
    """
    parts = entry.split(" ")
    name = parts[0]
    known = versions.get(name, [])
    if len(parts) >= 2:
        return (name, parts[1]) if parts[1] in known else None
    return (name, known[0]) if len(known) == 1 else None


def spec_from_lockfile(path: Path, *, size: Callable[[str, str], int] | None = None) -> RegistrySpec:
    """A spec with every crates.io package of a Cargo.lock at its exact version.

    Dependencies come from each package's lock `dependencies` (all as unconditional normal dependencies with
    `^version` requirements; a name needed at two versions is renamed `name-v<version>`); non-registry
    packages are skipped. The consumer depends on every registry package no other registry package uses.
    Sizes come from `size` (default `default_size`).
    """
    data = tomllib.loads(path.read_text())
    packages = [p for p in data.get("package", []) if p.get("source") == CRATES_IO_SOURCE]
    versions: dict[str, list[str]] = {}
    for p in packages:
        versions.setdefault(p["name"], []).append(p["version"])
    sizer = size or default_size
    used: set[tuple[str, str]] = set()
    crates = []
    for p in packages:
        targets = [t for t in (_lock_dep(e, versions) for e in p.get("dependencies", [])) if t is not None]
        used.update(targets)
        crates.append(
            CrateSpec(
                name=p["name"],
                version=p["version"],
                deps=tuple(_deps_to(targets)),
                size=sizer(p["name"], p["version"]),
            )
        )
    roots = [(p["name"], p["version"]) for p in packages if (p["name"], p["version"]) not in used]
    return RegistrySpec(tuple(crates), tuple(_deps_to(roots)))


def _deps_to(targets: Iterable[tuple[str, str]]) -> Iterator[DepSpec]:
    """Caret dependencies on (name, version) targets, renaming names that appear more than once."""
    targets = list(targets)
    counts: dict[str, int] = {}
    for name, _ in targets:
        counts[name] = counts.get(name, 0) + 1
    for name, version in targets:
        if counts[name] > 1:
            key = f"{name}-v{re.sub(r'[^0-9A-Za-z]+', '_', version)}"
            yield DepSpec(key, caret_req(version), package=name)
        else:
            yield DepSpec(name, caret_req(version))
