"""Run the real rustup in a clean, throwaway environment (fresh HOME, RUSTUP_HOME and CARGO_HOME).

The environment is built from scratch: nothing is inherited (this machine exports SSL_CERT_FILE,
SSL_CERT_DIR, CURL_CA_BUNDLE, RUSTUP_AUTO_INSTALL, ...), so the only CA rustup trusts is the one given,
and ~/.rustup and ~/.cargo are never touched. ``CARGO_HOME/bin`` holds a private copy of the real rustup
and hard links to it named ``rustc``, ``cargo``, ...: rustup acts as the proxy its argv[0] names, exactly
like an installed rustup, so ``client.run("rustc", "--version")`` in a directory with a
``rust-toolchain.toml`` resolves (and, with auto-install, installs) the pinned toolchain.

Origin tests point RUSTUP_DIST_SERVER straight at the fake origin; proxy tests keep the real
``https://static.rust-lang.org`` and pass ``proxy=`` and the proxy's CA instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.origins.installer import HOST_TRIPLE

REAL_DIST_SERVER = "https://static.rust-lang.org"
PROXY_NAMES = ("rustc", "cargo", "rustdoc", "rustfmt", "cargo-fmt", "cargo-clippy", "clippy-driver")


def find_rustup() -> Path:
    """The real rustup binary: $RUSTSTASH_TEST_RUSTUP, else ~/.cargo/bin/rustup, else `rustup` on PATH."""
    configured = os.environ.get("RUSTSTASH_TEST_RUSTUP")
    if configured:
        return Path(configured)
    default = Path.home() / ".cargo" / "bin" / "rustup"
    if default.exists():
        return default
    found = shutil.which("rustup")
    if found is None:
        raise FileNotFoundError("rustup is not installed")
    return Path(found)


def rustup_env(
    home: Path,
    *,
    dist_server: str,
    update_root: str,
    ca_pem: Path | None,
    proxy: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for one clean rustup: ``home/{rustup,cargo}`` homes, ``CARGO_HOME/bin`` first on PATH.

    ``ca_pem`` becomes SSL_CERT_FILE (the only trusted CA). ``proxy`` sets https_proxy/HTTPS_PROXY (and the
    http_ variants). CI=1 and RUSTUP_TERM_COLOR=never keep the output plain; ``extra`` is applied last
    (e.g. ``RUSTUP_AUTO_INSTALL``, ``RUSTUP_MAX_RETRIES``).
    """
    env = {
        "PATH": f"{home / 'cargo' / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "RUSTUP_HOME": str(home / "rustup"),
        "CARGO_HOME": str(home / "cargo"),
        "RUSTUP_DIST_SERVER": dist_server,
        "RUSTUP_UPDATE_ROOT": update_root,
        "CI": "1",
        "RUSTUP_TERM_COLOR": "never",
        "CARGO_TERM_COLOR": "never",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
    }
    if ca_pem is not None:
        env["SSL_CERT_FILE"] = str(ca_pem)
    if proxy is not None:
        for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
            env[name] = proxy
    if "TMPDIR" in os.environ:
        env["TMPDIR"] = os.environ["TMPDIR"]
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class RustupClient:
    """A throwaway rustup installation; see the module docstring."""

    home: Path
    env: dict[str, str]
    rustup_bin: Path

    @property
    def rustup_home(self) -> Path:
        return Path(self.env["RUSTUP_HOME"])

    @property
    def cargo_home(self) -> Path:
        return Path(self.env["CARGO_HOME"])

    @property
    def bin_dir(self) -> Path:
        return self.cargo_home / "bin"

    def rustup(
        self,
        *args: str,
        cwd: Path | None = None,
        check: bool = True,
        timeout: float = 180,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``rustup <args>``; with ``check`` a non-zero exit raises AssertionError showing its output."""
        return self.run("rustup", *args, cwd=cwd, check=check, timeout=timeout, env=env)

    def run(
        self,
        program: str,
        *args: str,
        cwd: Path | None = None,
        check: bool = True,
        timeout: float = 180,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``CARGO_HOME/bin/<program>`` (rustup or one of its proxies) in the clean environment."""
        command = [str(self.bin_dir / program), *args]
        result = subprocess.run(
            command,
            cwd=cwd or self.home,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)} exited {result.returncode}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
        return result

    def install(self, toolchain: str, *extra: str, profile: str = "minimal") -> subprocess.CompletedProcess[str]:
        """``rustup toolchain install <toolchain> --profile <profile> --no-self-update <extra>``."""
        return self.rustup("toolchain", "install", toolchain, "--profile", profile, "--no-self-update", *extra)

    def toolchains(self) -> list[str]:
        """Installed toolchain names, e.g. ``["stable-x86_64-unknown-linux-gnu"]``."""
        out = self.rustup("toolchain", "list").stdout
        return [line.split()[0] for line in out.splitlines() if line.strip() and "no installed" not in line]

    def toolchain_dir(self, name: str, triple: str = HOST_TRIPLE) -> Path:
        """The directory of an installed toolchain (``stable`` → ``toolchains/stable-<triple>``)."""
        full = name if name.endswith(triple) else f"{name}-{triple}"
        return self.rustup_home / "toolchains" / full

    def write_toolchain_file(self, project: Path, channel: str, **settings: str | list[str]) -> Path:
        """Write ``project/rust-toolchain.toml`` pinning ``channel`` (plus e.g. ``profile="minimal"``)."""
        project.mkdir(parents=True, exist_ok=True)
        lines = ["[toolchain]", f'channel = "{channel}"']
        for key, value in settings.items():
            rendered = "[" + ", ".join(f'"{v}"' for v in value) + "]" if isinstance(value, list) else f'"{value}"'
            lines.append(f"{key} = {rendered}")
        path = project / "rust-toolchain.toml"
        path.write_text("\n".join(lines) + "\n")
        return path


def make_rustup_client(
    home: Path,
    *,
    dist_server: str = REAL_DIST_SERVER,
    update_root: str | None = None,
    ca_pem: Path | None = None,
    proxy: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    rustup_bin: Path | None = None,
    proxies: Sequence[str] = PROXY_NAMES,
) -> RustupClient:
    """Create ``home`` with empty RUSTUP_HOME and CARGO_HOME, and ``CARGO_HOME/bin`` with rustup and its proxies.

    ``update_root`` defaults to ``<dist_server>/rustup``. The client never self-updates when driven through
    `RustupClient.install`; pass ``--no-self-update`` yourself to other commands that would.
    """
    binary = (rustup_bin or find_rustup()).resolve()
    env = rustup_env(
        home,
        dist_server=dist_server,
        update_root=update_root or f"{dist_server}/rustup",
        ca_pem=ca_pem,
        proxy=proxy,
        extra=extra_env,
    )
    bin_dir = Path(env["CARGO_HOME"]) / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    Path(env["RUSTUP_HOME"]).mkdir(parents=True, exist_ok=True)
    rustup = bin_dir / "rustup"
    if not rustup.exists():
        shutil.copy2(binary, rustup)  # a copy: a self-update can never touch the machine's rustup
    for name in proxies:
        link = bin_dir / name
        if not link.exists():
            os.link(rustup, link)
    return RustupClient(home=home, env=env, rustup_bin=binary)
