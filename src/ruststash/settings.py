"""Parsed, validated configuration. Built once by the CLI; everything else reads this frozen value."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from .errors import ConfigError
from .policy import DEFAULT_HTTP1_HOSTS

DEFAULT_CACHE_HOSTS = ("index.crates.io", "static.crates.io", "crates.io", "static.rust-lang.org")
DEFAULT_LISTEN = "127.0.0.1:3128"
DEFAULT_ADMIN_LISTEN = "127.0.0.1:9128"
DEFAULT_HOT_BYTES = 64 * 1024 * 1024

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def client_host(self) -> str:
        """The address a client on this machine uses to reach a listener bound to `host`."""
        if self.host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host

    def client_url(self) -> str:
        host = self.client_host()
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"


@dataclass(frozen=True)
class CacheHost:
    """A host whose TLS traffic is intercepted and cached. `port` None means any port."""

    host: str
    port: int | None = None

    def allow_pattern(self) -> str:
        """An anchored mitmproxy `allow_hosts` regex (matched with re.search against "host:port")."""
        port = r"\d+" if self.port is None else str(self.port)
        return f"^{re.escape(self.host)}:{port}$"


@dataclass(frozen=True)
class Origin:
    """One upstream base URL: requests keep their path, with `path_prefix` put in front."""

    scheme: str
    host: str
    port: int
    path_prefix: str

    @property
    def base(self) -> str:
        """`scheme://host:port`, as the breaker and metrics name an origin."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def url_for(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default_port = 443 if self.scheme == "https" else 80
        netloc = host if self.port == default_port else f"{host}:{self.port}"
        return f"{self.scheme}://{netloc}{self.path_prefix}{path}"


@dataclass(frozen=True)
class Resilience:
    """How long to wait for upstream, and when to stop asking it (DESIGN.md §4)."""

    stale_after: float = 3.0  # a stored copy exists: wait this long for upstream, then serve it STALE
    miss_timeout: float = 30.0  # nothing stored: wait this long for upstream, then answer 504
    read_timeout: float = 30.0  # a large body that stalls this long is abandoned
    negative_ttl: float = 60.0  # a 404/410/451 for an index file is remembered this long
    breaker_threshold: int = 3  # consecutive failures that mark an origin down
    breaker_backoff: float = 5.0  # first down period; doubles with each failed probe
    breaker_max_backoff: float = 300.0

    def __post_init__(self) -> None:
        for name in ("stale_after", "miss_timeout", "read_timeout", "breaker_backoff", "breaker_max_backoff"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive number of seconds")
        if self.negative_ttl < 0:
            raise ConfigError("--negative-ttl must not be negative")
        if self.breaker_threshold < 1:
            raise ConfigError("--breaker-threshold must be at least 1")


@dataclass(frozen=True)
class Settings:
    listen: HostPort
    admin_listen: HostPort
    cache_dir: Path
    data_dir: Path
    cache_hosts: tuple[CacheHost, ...]
    upstreams: dict[str, tuple[Origin, ...]] = field(default_factory=dict)
    upstream_ca: Path | None = None
    resilience: Resilience = field(default_factory=Resilience)
    max_bytes: int = 0  # 0: no cap
    hot_bytes: int = DEFAULT_HOT_BYTES  # memory for small bodies (hot_bodies); 0: none
    http1_hosts: frozenset[str] = DEFAULT_HTTP1_HOSTS  # cached hosts whose clients get HTTP/1.1 (policy)
    access: Access = field(default_factory=lambda: Access())


@dataclass(frozen=True)
class Access:
    """Who may use the proxy and where it may connect for them (docs/security.md)."""

    allow_remote: bool = False  # listening beyond loopback must be asked for
    proxy_auth: str | None = None  # mitmproxy's proxyauth: "user:pass" or "@/path/to/htpasswd"
    tunnel_allow: tuple[str, ...] = ()
    deny_private_tunnels: bool = False


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_access(listen: HostPort, admin_listen: HostPort, access: Access) -> None:
    for address, flag in ((listen, "--listen"), (admin_listen, "--admin-listen")):
        if not is_loopback(address.host) and not access.allow_remote:
            raise ConfigError(
                f"{flag} {address} is reachable from other machines: pass --allow-remote to mean it "
                "(and --proxy-auth for clients outside private networks)"
            )
    if access.proxy_auth is not None:
        auth = access.proxy_auth
        if auth.startswith("@"):
            if not Path(auth[1:]).is_file():
                raise ConfigError(f"--proxy-auth: no htpasswd file at {auth[1:]}")
        elif ":" not in auth or auth.startswith(":"):
            raise ConfigError("--proxy-auth takes USER:PASSWORD or @HTPASSWD-FILE")


_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}  # fmt: skip


def parse_size(value: str, what: str = "--max-size") -> int:
    """`20GiB`, `500MB`, `1.5TiB`, `1048576` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(f"{what} {value!r} is not a size such as 20GiB, 500MB or 1048576")
    number = float(match.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(number) or number >= 2**63:
        raise ConfigError(f"{what} {value!r} is too large")
    size = int(number)
    if size <= 0:
        raise ConfigError(f"{what} {value!r} must be more than zero")
    return size


def parse_host_port(value: str, what: str) -> HostPort:
    """Parse `HOST:PORT`, `[V6]:PORT` or `:PORT` (all interfaces)."""
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:([0-9]{1,5})|([^:\[\]]*):([0-9]{1,5})", value.strip())
    if not match:
        raise ConfigError(f"{what} {value!r} is not HOST:PORT")
    host = match.group(1) if match.group(1) is not None else match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ConfigError(f"{what} {value!r}: port must be between 1 and 65535")
    if host == "":
        host = "0.0.0.0"
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ConfigError(f"{what} {value!r}: the host must be an IP address or localhost") from None
    return HostPort(host, port)


def parse_cache_host(value: str) -> CacheHost:
    text = value.strip().lower()
    host, _, port_text = text.partition(":") if text.count(":") == 1 else (text, "", "")
    if not _HOSTNAME.match(host):
        raise ConfigError(f"--cache-host {value!r} is not a host name")
    if port_text and not (re.fullmatch(r"[0-9]{1,5}", port_text) and 0 < int(port_text) < 65536):
        raise ConfigError(f"--cache-host {value!r}: bad port")
    return CacheHost(host, int(port_text) if port_text else None)


def parse_origin(url: str, what: str) -> Origin:
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:
        raise ConfigError(f"{what}: {url!r} is not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}: {url!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ConfigError(f"{what}: {url!r} must not have a query or fragment")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ConfigError(f"{what}: {url!r} has a bad port") from None
    return Origin(parts.scheme, parts.hostname.lower(), port, parts.path.rstrip("/"))


def parse_upstream(value: str) -> tuple[str, tuple[Origin, ...]]:
    """Parse `HOST=URL[,URL...]`."""
    host, sep, urls = value.partition("=")
    host = host.strip().lower()
    if not sep or not _HOSTNAME.match(host) or not urls.strip():
        raise ConfigError(f"--upstream {value!r} is not HOST=URL[,URL...]")
    what = f"--upstream {host}"
    return host, tuple(parse_origin(url, what) for url in urls.split(",") if url.strip())


def build_cache_hosts(extra: tuple[str, ...]) -> tuple[CacheHost, ...]:
    hosts = [CacheHost(h) for h in DEFAULT_CACHE_HOSTS]
    for value in extra:
        parsed = parse_cache_host(value)
        if parsed not in hosts:
            hosts.append(parsed)
    return tuple(hosts)


def build_http1_hosts(values: tuple[str, ...], cache_hosts: tuple[CacheHost, ...]) -> frozenset[str]:
    """`--http1-host` values: each must name a cached host (its clients are the ones answered)."""
    cached = {host.host for host in cache_hosts}
    hosts = set(DEFAULT_HTTP1_HOSTS)
    for value in values:
        host = value.strip().lower()
        if not _HOSTNAME.match(host):
            raise ConfigError(f"--http1-host {value!r} is not a host name")
        if host not in cached:
            raise ConfigError(f"--http1-host {host}: not a cached host; name it with --cache-host {host} too")
        hosts.add(host)
    return frozenset(hosts)


def build_upstreams(values: tuple[str, ...]) -> dict[str, tuple[Origin, ...]]:
    upstreams: dict[str, tuple[Origin, ...]] = {}
    for value in values:
        host, origins = parse_upstream(value)
        if host in upstreams:
            raise ConfigError(f"--upstream {host} is given twice; list its URLs in one option, comma-separated")
        upstreams[host] = origins
    return upstreams
