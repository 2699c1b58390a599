"""TLS material for the test origins: one throwaway CA that signs every origin's certificate."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

# The names a client (through --upstream) or a test may use to reach an origin.
ORIGIN_NAMES = (
    "127.0.0.1",
    "::1",
    "localhost",
    "index.crates.io",
    "static.crates.io",
    "crates.io",
    "static.rust-lang.org",
)


@dataclass(frozen=True)
class OriginTLS:
    """A CA (written to `ca_pem`) and a server certificate for `ORIGIN_NAMES` signed by it."""

    ca: trustme.CA
    server_cert: trustme.LeafCert
    ca_pem: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert.configure_cert(context)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def server_cert_der(self) -> bytes:
        """The DER bytes of the leaf certificate the origins present."""
        pem = self.server_cert.cert_chain_pems[0].bytes()
        return ssl.PEM_cert_to_DER_cert(pem.decode("ascii"))


def make_origin_tls(directory: Path, names: tuple[str, ...] = ORIGIN_NAMES) -> OriginTLS:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="ruststash test origins")
    server_cert = ca.issue_cert(*names)
    ca_pem = directory / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    return OriginTLS(ca=ca, server_cert=server_cert, ca_pem=ca_pem)
