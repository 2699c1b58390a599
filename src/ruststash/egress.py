"""Where the proxy may connect on a client's behalf. Pure: addresses are resolved by the caller.

Intercepted (cached) hosts are fetched by ruststash itself from their configured origins. Everything else
is a tunnel or a forward mitmproxy makes for a client: `--tunnel-allow` limits those to named hosts, and
`--deny-private-tunnels` keeps a shared proxy from being used to reach the site's internal network.

With `--deny-private-tunnels` the connection is made to the address that was checked (`pinned_address`), not
to the name: a name that resolves to a public address for the check and to an internal one a moment later
(DNS rebinding) must not get through, and neither must a name that does not resolve at check time.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class EgressPolicy:
    tunnel_allow: tuple[str, ...] = ()  # host patterns (`*.example.com`, `github.com`); empty: any host
    deny_private: bool = False
    always_allowed: frozenset[tuple[str, int]] = frozenset()  # ruststash's own origins and loopback services

    def is_ours(self, host: str, port: int) -> bool:
        """ruststash's own origins and loopback services: always allowed, always connected to by name."""
        return (host.lower(), port) in self.always_allowed

    def _pattern_matches(self, host: str) -> bool:
        for pattern in self.tunnel_allow:
            regex = "^" + re.escape(pattern.lower()).replace(r"\*", "[^.]+") + "$"
            if re.match(regex, host.lower()):
                return True
        return False


def is_internal(address: str) -> bool:
    """Loopback, private, link-local, unique-local, multicast, reserved or unspecified addresses."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def refusal(policy: EgressPolicy, host: str, port: int, addresses: Sequence[str]) -> str | None:
    """Why a connection to host:port (resolving to `addresses`) must not be made, or None."""
    if policy.is_ours(host, port):
        return None
    if policy.tunnel_allow and not policy._pattern_matches(host):
        return f"{host} is not in --tunnel-allow"
    if policy.deny_private:
        if not addresses:
            return f"{host} does not resolve and --deny-private-tunnels is set"
        internal = [a for a in addresses if is_internal(a)]
        if internal:
            return f"{host} resolves to an internal address ({internal[0]}) and --deny-private-tunnels is set"
    return None


def pinned_address(policy: EgressPolicy, host: str, port: int, addresses: Sequence[str]) -> str | None:
    """The address to connect to instead of `host` once `refusal` allowed it, or None to connect by name.
    The first address is the one a connect by name would try first (getaddrinfo's order)."""
    if not policy.deny_private or policy.is_ours(host, port) or not addresses:
        return None
    return addresses[0]
