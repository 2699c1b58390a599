"""Run the real cargo in a clean, throwaway environment, and write consumer projects for it to build.

Nothing here knows about ruststash: the origin tests point cargo at a fake crates.io through source
replacement, the proxy tests set HTTPS_PROXY and a CA bundle instead. Every cargo run gets an environment
built from scratch (no inherited CARGO_*/RUSTUP_*/proxy variables), its own HOME and CARGO_HOME, and the real
toolchain's bin directory on PATH, so the rustup proxy and ~/.cargo are never involved.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CRATES_IO_SOURCE = "registry+https://github.com/rust-lang/crates.io-index"


@functools.cache
def real_cargo() -> Path:
    """The toolchain's own cargo binary (not the rustup proxy), found with `rustup which cargo`."""
    rustup = shutil.which("rustup")
    if rustup is not None:
        out = subprocess.run([rustup, "which", "cargo"], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    cargo = shutil.which("cargo")
    if cargo is None:
        raise FileNotFoundError("cargo is not installed")
    return Path(cargo).resolve()


def toolchain_bin() -> Path:
    """The directory holding the real cargo and rustc."""
    return real_cargo().parent


def clean_env(home: Path, cargo_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment made from scratch: PATH (toolchain bin, /usr/bin, /bin), HOME, CARGO_HOME, no colours.

    `extra` is added last (for example CARGO_HTTP_CAINFO, HTTPS_PROXY, CARGO_NET_RETRY).
    """
    env = {
        "PATH": f"{toolchain_bin()}:/usr/bin:/bin",
        "HOME": str(home),
        "CARGO_HOME": str(cargo_home),
        "CARGO_TERM_COLOR": "never",
        "CARGO_TERM_PROGRESS_WHEN": "never",
        "LANG": "C.UTF-8",
    }
    for name in ("TMPDIR",):
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra or {})
    return env


def source_replacement_toml(index_url: str, name: str = "fake") -> str:
    """CARGO_HOME config text that sends every crates.io request to the sparse index at `index_url`."""
    url = index_url.rstrip("/") + "/"
    return f'[source.crates-io]\nreplace-with = "{name}"\n\n[source.{name}]\nregistry = "sparse+{url}"\n'


@dataclass
class CargoSandbox:
    """A fresh HOME and CARGO_HOME under `root`, and a way to run the real cargo in them.

    `config_toml` is written to CARGO_HOME/config.toml; `env_extra` is added to every run's environment.
    """

    root: Path
    config_toml: str = ""
    env_extra: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.cargo_home.mkdir(parents=True, exist_ok=True)
        if self.config_toml:
            (self.cargo_home / "config.toml").write_text(self.config_toml)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def cargo_home(self) -> Path:
        return self.root / "cargo-home"

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return clean_env(self.home, self.cargo_home, {**(self.env_extra or {}), **(extra or {})})

    def run(
        self,
        args: Sequence[str],
        cwd: Path,
        *,
        check: bool = True,
        timeout: float = 300,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `cargo ARGS` in `cwd`; with `check`, raise `CargoError` (carrying the output) on failure."""
        return run_cargo(args, cwd, self.env(extra_env), check=check, timeout=timeout)


class CargoError(RuntimeError):
    def __init__(self, args: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"cargo {' '.join(args)} exited {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
        self.result = result


def run_cargo(
    args: Sequence[str], cwd: Path, env: Mapping[str, str], *, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(real_cargo()), *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise CargoError(args, result)
    return result


@dataclass(frozen=True)
class ConsumerDep:
    """One `[dependencies]` entry of a consumer project: `key = { package = crate, version = req }`."""

    key: str
    req: str
    package: str | None = None

    @property
    def rust_name(self) -> str:
        return self.key.replace("-", "_")


def write_consumer(
    directory: Path,
    deps: Iterable[ConsumerDep | tuple[str, str]],
    *,
    name: str = "consumer",
    call_weight: bool = True,
) -> Path:
    """Write a library crate at `directory` depending on `deps`, and return its directory.

    With `call_weight`, lib.rs calls `weight()` of every dependency (the generated test crates all export it),
    so `cargo build` really links the graph; otherwise lib.rs is empty.
    """
    entries = [d if isinstance(d, ConsumerDep) else ConsumerDep(d[0], d[1]) for d in deps]
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        "[package]",
        f"name = {json.dumps(name)}",
        'version = "0.1.0"',
        'edition = "2021"',
        "publish = false",
        "",
        "[workspace]",
        "",
        "[dependencies]",
    ]
    for dep in entries:
        package = f", package = {json.dumps(dep.package)}" if dep.package else ""
        lines.append(f"{json.dumps(dep.key)} = {{ version = {json.dumps(dep.req)}{package} }}")
    (directory / "Cargo.toml").write_text("\n".join(lines) + "\n")
    (directory / "src").mkdir(exist_ok=True)
    body = ["pub fn total() -> u64 {", "    let mut w = 0u64;"]
    if call_weight:
        body += [f"    w = w.wrapping_add({dep.rust_name}::weight());" for dep in entries]
    body += ["    w", "}"]
    (directory / "src" / "lib.rs").write_text("\n".join(body) + "\n")
    return directory


@dataclass(frozen=True)
class LockedPackage:
    name: str
    version: str
    source: str | None
    checksum: str | None
    dependencies: tuple[str, ...]


def read_lockfile(path: Path) -> list[LockedPackage]:
    """The `[[package]]` entries of a Cargo.lock."""
    data = tomllib.loads(path.read_text())
    return [
        LockedPackage(
            name=p["name"],
            version=p["version"],
            source=p.get("source"),
            checksum=p.get("checksum"),
            dependencies=tuple(p.get("dependencies", ())),
        )
        for p in data.get("package", [])
    ]


def locked_versions(path: Path) -> dict[str, list[str]]:
    """Registry packages of a Cargo.lock: name -> versions."""
    out: dict[str, list[str]] = {}
    for package in read_lockfile(path):
        if package.source == CRATES_IO_SOURCE:
            out.setdefault(package.name, []).append(package.version)
    return out
