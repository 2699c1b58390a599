"""ruststash's local certificate authority and the trust bundles clients and mitmproxy use.

mitmproxy reads its CA from `confdir` as `mitmproxy-ca.pem` (private key + certificate); clients trust
`mitmproxy-ca-cert.pem`. We create both ourselves (named for ruststash) so that `ruststash env` and
`ruststash ca path` work before the proxy has ever run.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import certs

from .errors import ConfigError

CA_BASENAME = "mitmproxy"  # the name mitmproxy's tlsconfig looks for in confdir
CLIENT_BUNDLE = "ca-bundle.pem"
UPSTREAM_BUNDLE = "upstream-ca-bundle.pem"
CA_KEY_SIZE = 2048

# Where distributions keep their bundle of trusted roots (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE).
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
)


@dataclass(frozen=True)
class CaFiles:
    key_and_cert: Path  # private: mitmproxy-ca.pem
    cert: Path  # public: what clients trust


def ca_files(data_dir: Path) -> CaFiles:
    return CaFiles(data_dir / f"{CA_BASENAME}-ca.pem", data_dir / f"{CA_BASENAME}-ca-cert.pem")


def ensure_ca(data_dir: Path) -> CaFiles:
    """Create the CA on first use (private key readable by the owner only)."""
    files = ca_files(data_dir)
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not files.key_and_cert.exists():
            certs.CertStore.create_store(
                data_dir, CA_BASENAME, CA_KEY_SIZE, organization="ruststash", cn="ruststash local CA"
            )
    except OSError as exc:
        raise ConfigError(f"cannot create the CA in {data_dir}: {exc.strerror or exc}") from exc
    if not files.cert.exists():
        raise ConfigError(f"{files.key_and_cert} exists but {files.cert} is missing: restore it or remove both")
    return files


def system_roots() -> str:
    """The PEM text of the system's trusted roots (not $SSL_CERT_FILE: that may point at our own bundle)."""
    candidates = list(SYSTEM_BUNDLES)
    default = ssl.get_default_verify_paths().openssl_cafile
    if default:
        candidates.append(default)
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file():
            return path.read_text(encoding="utf-8", errors="replace")
    try:
        import certifi

        return Path(certifi.where()).read_text(encoding="utf-8")
    except ImportError:
        return ""


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _joined(*pems: str) -> str:
    return "".join(pem if pem.endswith("\n") else pem + "\n" for pem in pems if pem)


def write_client_bundle(data_dir: Path) -> Path:
    """System roots plus our CA: what SSL_CERT_FILE / CARGO_HTTP_CAINFO point at. A bundle holding only our
    CA would break every host that is not intercepted (those keep their real certificates)."""
    files = ensure_ca(data_dir)
    bundle = data_dir / CLIENT_BUNDLE
    _write_atomically(bundle, _joined(system_roots(), "# ruststash local CA\n", files.cert.read_text()))
    return bundle


def write_upstream_bundle(data_dir: Path, extra_ca: Path) -> Path:
    """System roots plus `--upstream-ca`, for mitmproxy's own upstream connections (its option replaces the
    default roots rather than adding to them)."""
    try:
        extra = extra_ca.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--upstream-ca {extra_ca}: {exc.strerror or exc}") from exc
    if "BEGIN CERTIFICATE" not in extra:
        raise ConfigError(f"--upstream-ca {extra_ca}: no PEM certificate in it")
    bundle = data_dir / UPSTREAM_BUNDLE
    _write_atomically(bundle, _joined(system_roots(), extra))
    return bundle


@dataclass(frozen=True)
class TrustStore:
    """A system trust store: where to put an extra CA and the command that rebuilds the bundle."""

    anchor_dir: Path
    file_name: str
    update_command: tuple[str, ...]


TRUST_STORES = (
    TrustStore(Path("/usr/local/share/ca-certificates"), "ruststash.crt", ("update-ca-certificates",)),
    TrustStore(Path("/etc/pki/ca-trust/source/anchors"), "ruststash.pem", ("update-ca-trust", "extract")),
    TrustStore(Path("/etc/pki/trust/anchors"), "ruststash.pem", ("update-ca-certificates",)),
)


def find_trust_store() -> TrustStore | None:
    for store in TRUST_STORES:
        if store.anchor_dir.is_dir() and shutil.which(store.update_command[0]):
            return store
    return None


def install_system_ca(data_dir: Path) -> Path:
    """Add our CA to the system trust store (needs root). Returns where the certificate was put."""
    if os.geteuid() != 0:
        raise ConfigError("`ruststash ca install` changes the system trust store: run it as root")
    files = ensure_ca(data_dir)
    store = find_trust_store()
    if store is None:
        raise ConfigError(
            "no system trust store found (looked for update-ca-certificates and update-ca-trust); "
            f"add {files.cert} to your system's trusted roots by hand"
        )
    target = store.anchor_dir / store.file_name
    shutil.copyfile(files.cert, target)
    os.chmod(target, 0o644)
    result = subprocess.run(store.update_command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigError(f"{' '.join(store.update_command)} failed: {result.stderr.strip() or result.returncode}")
    return target


def check_key_private(files: CaFiles) -> None:
    mode = files.key_and_cert.stat().st_mode
    if mode & 0o077:
        raise ConfigError(
            f"{files.key_and_cert} is readable by group or others (mode {mode & 0o777:o}): run "
            f"`chmod 600 {files.key_and_cert}`"
        )
