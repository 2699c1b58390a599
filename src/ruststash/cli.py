"""The command line. The only module that reads the process environment (through click's envvar support)."""

from __future__ import annotations

import asyncio
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import click
import platformdirs

from . import __version__, ca, log_setup
from .errors import ConfigError, RuststashError
from .settings import (
    DEFAULT_ADMIN_LISTEN,
    DEFAULT_HOT_BYTES,
    DEFAULT_LISTEN,
    Access,
    HostPort,
    Resilience,
    Settings,
    build_cache_hosts,
    build_http1_hosts,
    build_upstreams,
    check_access,
    parse_host_port,
    parse_size,
)

FC = TypeVar("FC", bound=Callable[..., object])

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def default_cache_dir() -> Path:
    return Path(platformdirs.user_cache_dir("ruststash"))


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("ruststash"))


def _listen_option(
    default: str, name: str = "--listen", envvar: str = "RUSTSTASH_LISTEN", what: str = "proxy"
) -> Callable[[FC], FC]:
    return click.option(
        name,
        envvar=envvar,
        show_envvar=True,
        default=default,
        show_default=True,
        metavar="HOST:PORT",
        help=f"Address the {what} listens on.",
    )


def cache_dir_option(text: str) -> Callable[[FC], FC]:
    """`--cache-dir` (RUSTSTASH_CACHE_DIR), for every command that works on a store."""
    return click.option(
        "--cache-dir",
        envvar="RUSTSTASH_CACHE_DIR",
        show_envvar=True,
        type=click.Path(file_okay=False, path_type=Path),
        default=default_cache_dir,
        show_default="the user cache directory",
        help=text,
    )


data_dir_option = click.option(
    "--data-dir",
    envvar="RUSTSTASH_DATA_DIR",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    default=default_data_dir,
    show_default="the user data directory",
    help="Where the CA and the client trust bundle live.",
)


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="ruststash")
def main() -> None:
    """ruststash: a caching proxy for cargo and rustup.

    Start it with `ruststash serve`, then `eval "$(ruststash env)"` in the shell that runs cargo or rustup.
    """


_RESILIENCE_HELP = {
    "stale_after": "With a stored copy, wait at most this long for upstream (less for an origin that usually "
    "answers far faster: 4x its slowest recent answer, at least 0.25s), then serve the copy (X-Cache: STALE) "
    "and let the fetch refresh it in the background.",
    "miss_timeout": "With nothing stored, wait this long for upstream, then answer 504.",
    "read_timeout": "Abandon an upstream body that stalls this long.",
    "negative_ttl": "Remember an index file's 404/410/451 this long (0: not at all).",
    "breaker_threshold": "Consecutive failures after which an upstream origin is marked down.",
    "breaker_backoff": "How long an origin stays marked down at first; doubles after each failed probe.",
    "breaker_max_backoff": "The longest an origin stays marked down before the next probe.",
}


def upstream_options[C: Callable[..., object]](command: C) -> C:
    """`--upstream` and `--upstream-ca`, for every command that fetches from upstream (serve, warm)."""
    command = click.option(
        "--upstream-ca",
        envvar="RUSTSTASH_UPSTREAM_CA",
        show_envvar=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Also trust this CA (PEM) for upstream TLS, on top of the system roots.",
    )(command)
    return click.option(
        "--upstream",
        "upstreams",
        multiple=True,
        envvar="RUSTSTASH_UPSTREAM",
        show_envvar=True,
        metavar="HOST=URL[,URL...]",
        help="Fetch what is asked of HOST from these origins instead, keeping the path (a URL's path is put "
        "in front). Repeatable; the environment variable takes a space-separated list.",
    )(command)


def _resilience_options[F: Callable[..., object]](command: F) -> F:
    defaults = Resilience()
    for name, text in reversed(_RESILIENCE_HELP.items()):
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        command = click.option(
            flag,
            name,
            envvar="RUSTSTASH_" + name.upper(),
            show_envvar=True,
            type=type(default),
            default=default,
            show_default=True,
            metavar="N" if isinstance(default, int) else "SECONDS",
            help=text,
        )(command)
    return command


@main.command(context_settings=CONTEXT)
@_listen_option(DEFAULT_LISTEN)
@_listen_option(DEFAULT_ADMIN_LISTEN, "--admin-listen", "RUSTSTASH_ADMIN_LISTEN", "admin server (/healthz)")
@cache_dir_option("Where cached bodies and their index are stored.")
@data_dir_option
@click.option(
    "--cache-host",
    "cache_hosts",
    multiple=True,
    envvar="RUSTSTASH_CACHE_HOST",
    show_envvar=True,
    metavar="HOST[:PORT]",
    help="Intercept and cache this host too (repeatable; the environment variable takes a space-separated "
    "list). Always cached: index.crates.io, static.crates.io, crates.io, static.rust-lang.org.",
)
@click.option(
    "--http1-host",
    "http1_hosts",
    multiple=True,
    envvar="RUSTSTASH_HTTP1_HOST",
    show_envvar=True,
    metavar="HOST",
    help="Answer the clients of this cached host over HTTP/1.1 (repeatable): for a rustup mirror, whose large "
    "archives go out faster that way. Not for a host that serves a cargo index: cargo would then have only two "
    "requests in flight. Always: static.rust-lang.org.",
)
@upstream_options
@click.option(
    "--allow-remote",
    is_flag=True,
    envvar="RUSTSTASH_ALLOW_REMOTE",
    show_envvar=True,
    help="Allow --listen/--admin-listen on addresses other machines can reach. Clients from public "
    "addresses are then refused unless --proxy-auth is set.",
)
@click.option(
    "--proxy-auth",
    envvar="RUSTSTASH_PROXY_AUTH",
    show_envvar=True,
    metavar="USER:PASSWORD|@HTPASSWD",
    help="Require proxy authentication (clients put it in the proxy URL: http://user:pass@host:3128).",
)
@click.option(
    "--tunnel-allow",
    multiple=True,
    envvar="RUSTSTASH_TUNNEL_ALLOW",
    show_envvar=True,
    metavar="HOST",
    help="Only tunnel to these hosts (repeatable; `*.example.com` matches one label). Default: any host.",
)
@click.option(
    "--deny-private-tunnels",
    is_flag=True,
    envvar="RUSTSTASH_DENY_PRIVATE_TUNNELS",
    show_envvar=True,
    help="Refuse tunnels to loopback, private and link-local addresses (for shared deployments).",
)
@click.option(
    "--max-size",
    envvar="RUSTSTASH_MAX_SIZE",
    show_envvar=True,
    metavar="SIZE",
    help="Cap the store at this size (20GiB, 500MB, ...); least recently used entries are evicted. Default: no cap.",
)
@click.option(
    "--memory-cache",
    envvar="RUSTSTASH_MEMORY_CACHE",
    show_envvar=True,
    metavar="SIZE",
    default=f"{DEFAULT_HOT_BYTES // 2**20}MiB",
    show_default=True,
    help="Memory for small bodies (up to 512 KiB each) answered without reading the disk, filled at start with "
    "those used most recently; 0 for none.",
)
@_resilience_options
@click.option(
    "--log-level",
    envvar="RUSTSTASH_LOG_LEVEL",
    show_envvar=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="info logs one line per request.",
)
def serve(
    listen: str,
    admin_listen: str,
    cache_dir: Path,
    data_dir: Path,
    cache_hosts: tuple[str, ...],
    http1_hosts: tuple[str, ...],
    upstreams: tuple[str, ...],
    upstream_ca: Path | None,
    allow_remote: bool,
    proxy_auth: str | None,
    tunnel_allow: tuple[str, ...],
    deny_private_tunnels: bool,
    max_size: str | None,
    memory_cache: str,
    log_level: str,
    **resilience: float,
) -> None:
    """Run the caching proxy."""
    from .proxy import serve as run_proxy  # mitmproxy's import cost is paid only by `serve`

    log_setup.setup(log_level)
    with _clear_errors():
        cached = build_cache_hosts(cache_hosts)
        settings = Settings(
            listen=parse_host_port(listen, "--listen"),
            admin_listen=parse_host_port(admin_listen, "--admin-listen"),
            cache_dir=cache_dir.expanduser().absolute(),
            data_dir=data_dir.expanduser().absolute(),
            cache_hosts=cached,
            http1_hosts=build_http1_hosts(http1_hosts, cached),
            upstreams=build_upstreams(upstreams),
            upstream_ca=upstream_ca.expanduser().absolute() if upstream_ca else None,
            resilience=Resilience(**resilience),  # type: ignore[arg-type]
            max_bytes=parse_size(max_size) if max_size else 0,
            hot_bytes=0 if memory_cache.strip() == "0" else parse_size(memory_cache, "--memory-cache"),
            access=Access(allow_remote, proxy_auth, tunnel_allow, deny_private_tunnels),
        )
        check_access(settings.listen, settings.admin_listen, settings.access)
        asyncio.run(run_proxy(settings))


@main.command(context_settings=CONTEXT)
@_listen_option(DEFAULT_LISTEN)
@data_dir_option
@click.option(
    "--shell",
    type=click.Choice(["sh", "fish", "powershell"]),
    default="sh",
    show_default=True,
    help="Syntax of the output.",
)
def env(listen: str, data_dir: Path, shell: str) -> None:
    """Print what a client shell needs: eval "$(ruststash env)".

    Sets HTTPS_PROXY, and SSL_CERT_FILE and CARGO_HTTP_CAINFO to a bundle holding the system's roots plus
    ruststash's CA (which this command creates if needed).
    """
    with _clear_errors():
        proxy = parse_host_port(listen, "--listen")
        bundle = ca.write_client_bundle(data_dir.expanduser().absolute())
        click.echo(render_env(client_env(proxy, bundle), shell), nl=False)


def client_env(proxy: HostPort, bundle: Path) -> dict[str, str]:
    url = proxy.client_url()
    # cargo and rustup both honour HTTPS_PROXY / https_proxy; neither honours http_proxy alone for HTTPS.
    return {
        "HTTPS_PROXY": url,
        "https_proxy": url,
        "SSL_CERT_FILE": str(bundle),
        "CARGO_HTTP_CAINFO": str(bundle),
    }


def render_env(variables: dict[str, str], shell: str) -> str:
    lines = []
    for name, value in variables.items():
        if shell == "fish":
            lines.append(f"set -gx {name} {shlex.quote(value)};")
        elif shell == "powershell":
            lines.append(f"$env:{name} = '{value.replace(chr(39), chr(39) * 2)}'")
        else:
            lines.append(f"export {name}={shlex.quote(value)}")
    return "\n".join(lines) + "\n"


@main.command(context_settings=CONTEXT)
@cache_dir_option("The store to check.")
def verify(cache_dir: Path) -> None:
    """Re-hash every stored body; remove corrupt ones (and what points at them). Exit 1 if any were found."""
    from .store import Store

    with _clear_errors():
        directory = cache_dir.expanduser().absolute()
        if not (directory / "FORMAT").exists():
            raise ConfigError(f"{directory} is not a ruststash store")
        store = Store(directory, clean_tmp=False)
        try:
            report = store.verify()
        finally:
            store.close()
    click.echo(f"checked {report.checked} bodies in {directory}")
    for digest in report.corrupt:
        click.echo(f"corrupt: {digest} (removed, with the entries that pointed at it)")
    for key in report.missing:
        click.echo(f"missing body: {key} (entry removed)")
    if report.orphans:
        click.echo(f"removed {report.orphans} bodies no entry pointed at")
    if not report.clean:
        click.echo(f"{len(report.corrupt)} corrupt, {len(report.missing)} missing", err=True)
        sys.exit(1)
    click.echo("ok: every body matches its digest")


@main.group(context_settings=CONTEXT)
def ca_group() -> None:
    """The local certificate authority clients must trust."""


main.add_command(ca_group, "ca")


@ca_group.command("path", context_settings=CONTEXT)
@data_dir_option
def ca_path(data_dir: Path) -> None:
    """Print the path of the CA certificate (creating the CA if needed)."""
    with _clear_errors():
        click.echo(str(ca.ensure_ca(data_dir.expanduser().absolute()).cert))


@ca_group.command("install", context_settings=CONTEXT)
@data_dir_option
def ca_install(data_dir: Path) -> None:
    """Add the CA to the system trust store (run as root)."""
    with _clear_errors():
        target = ca.install_system_ca(data_dir.expanduser().absolute())
        click.echo(f"installed {target}")


class _clear_errors:
    """Our errors become one line on stderr and exit code 2, never a traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> Literal[False]:
        if isinstance(exc, RuststashError):
            click.echo(f"ruststash: error: {exc}", err=True)
            sys.exit(2)
        if isinstance(exc, KeyboardInterrupt):
            sys.exit(130)
        return False


# The operator tools (warm, export, import, stats, ls, purge) register themselves on `main`.
from . import cli_tools  # noqa: E402, F401
