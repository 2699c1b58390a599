"""Fetching from upstream origins with a pooled aiohttp client. Library errors become UpstreamError here."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp

from .errors import ConfigError, UpstreamError
from .settings import Origin

MAX_REDIRECTS = 5
# Bodies are held in memory on this path; crates and index files are KB to a few MB.
MAX_BODY_BYTES = 256 * 1024 * 1024
# Headers a client sends that upstream needs to answer the same way (cargo's sparse protocol marker).
FORWARDED_REQUEST_HEADERS = ("user-agent", "accept", "cargo-protocol")


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    url: str

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


class UpstreamMap:
    """Where requests for a host go: its own origin by default, or the `--upstream` origins in order."""

    def __init__(self, upstreams: dict[str, tuple[Origin, ...]]) -> None:
        self._upstreams = upstreams

    def origins(self, scheme: str, host: str, port: int) -> tuple[Origin, ...]:
        mapped = self._upstreams.get(host.lower())
        return mapped if mapped else (Origin(scheme, host.lower(), port, ""),)

    def urls(self, url: str) -> tuple[str, ...]:
        """Every URL to try, in order, for an absolute `url`."""
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return tuple(o.url_for(path) for o in self.origins(parts.scheme, parts.hostname or "", port))


def make_ssl_context(extra_ca: Path | None) -> ssl.SSLContext:
    """The system's trusted roots plus `--upstream-ca` (a private mirror, or the tests' local origins)."""
    context = ssl.create_default_context()
    if extra_ca is not None:
        try:
            context.load_verify_locations(cafile=str(extra_ca))
        except OSError as exc:
            raise ConfigError(f"--upstream-ca {extra_ca}: {exc.strerror or exc}") from exc
        except ssl.SSLError as exc:
            raise ConfigError(f"--upstream-ca {extra_ca}: not a PEM certificate ({exc.reason})") from exc
    return context


class Upstream:
    def __init__(self, mapping: UpstreamMap, ssl_context: ssl.SSLContext, user_agent: str) -> None:
        self.mapping = mapping
        self._ssl_context = ssl_context
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self._ssl_context, limit=64, limit_per_host=16, ttl_dns_cache=60)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=30)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, url: str, headers: dict[str, str]) -> UpstreamResponse:
        """GET `url` whole from the first of its origins that answers; 3xx are followed (through the same
        mapping). Raises UpstreamError when no origin gave a complete response."""
        async with self.stream(url, headers) as response:
            host = urlsplit(response.url).netloc
            with _mapped_errors(host):
                body = await _read_body(response.raw, host)
            return UpstreamResponse(response.status, response.headers, body, response.url)

    @contextlib.asynccontextmanager
    async def stream(self, url: str, headers: dict[str, str]) -> AsyncIterator[StreamingResponse]:
        """Open `url` and yield once the response headers are in; the body is read by the caller through
        `chunks()`. Origins are tried in order until one answers (any HTTP status counts as an answer)."""
        errors: list[str] = []
        status = 502
        for candidate in self.mapping.urls(url):
            try:
                response = await self._open_following(candidate, headers)
            except UpstreamError as exc:
                errors.append(exc.reason)
                status = exc.status
                continue
            try:
                yield response
            finally:
                response.raw.release()
            return
        raise UpstreamError("; ".join(errors), status)

    async def _open_following(self, url: str, headers: dict[str, str]) -> StreamingResponse:
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._open_once(url, headers)
            location = response.headers_dict().get("location")
            if response.status not in (301, 302, 303, 307, 308) or not location:
                return response
            response.raw.release()
            url = self.mapping.urls(urljoin(url, location))[0]
        raise UpstreamError(f"too many redirects from {url}")

    async def _open_once(self, url: str, headers: dict[str, str]) -> StreamingResponse:
        assert self._session is not None, "Upstream.start() was not called"
        send = {"user-agent": self._user_agent, **headers}
        with _mapped_errors(urlsplit(url).netloc):
            raw = await self._session.get(url, headers=send, allow_redirects=False)
        return StreamingResponse(raw, url)


class StreamingResponse:
    """An upstream response whose headers are in and whose body is still to be read."""

    def __init__(self, raw: aiohttp.ClientResponse, url: str) -> None:
        self.raw = raw
        self.url = url
        self.status = raw.status
        self.headers = tuple(raw.headers.items())
        self.content_length = raw.content_length if not raw.headers.get("content-encoding") else None

    def headers_dict(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers}

    async def chunks(self, size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The body in chunks; raises UpstreamError if it breaks off or is shorter than Content-Length."""
        host = urlsplit(self.url).netloc
        received = 0
        with _mapped_errors(host):
            async for chunk in self.raw.content.iter_chunked(size):
                received += len(chunk)
                yield chunk
        if self.content_length is not None and received != self.content_length:
            raise UpstreamError(f"{host}: body truncated ({received} of {self.content_length} bytes)")


@contextlib.contextmanager
def _mapped_errors(host: str) -> Iterator[None]:
    """aiohttp's exceptions become UpstreamError with a one-line reason (and 504 for timeouts)."""
    try:
        yield
    except UpstreamError:
        raise
    except aiohttp.ClientConnectorCertificateError as exc:
        raise UpstreamError(f"{host}: TLS certificate not trusted ({exc.certificate_error})") from exc
    except aiohttp.ClientSSLError as exc:
        raise UpstreamError(f"{host}: TLS error ({exc})") from exc
    except aiohttp.ClientConnectorDNSError as exc:
        raise UpstreamError(f"{host}: DNS lookup failed") from exc
    except aiohttp.ClientConnectorError as exc:
        raise UpstreamError(f"{host}: cannot connect ({exc.os_error.strerror or exc.os_error})") from exc
    except TimeoutError as exc:
        raise UpstreamError(f"{host}: timed out", 504) from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamError(f"{host}: body cut short ({exc})") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise UpstreamError(f"{host}: connection closed before a full response") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(f"{host}: {type(exc).__name__}: {exc}") from exc


async def _read_body(response: aiohttp.ClientResponse, host: str) -> bytes:
    """The whole body, up to MAX_BODY_BYTES (a read returns what has arrived so far, not all of it)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise UpstreamError(f"{host}: body larger than {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    expected = response.content_length
    if expected is not None and not response.headers.get("content-encoding") and len(body) != expected:
        raise UpstreamError(f"{host}: body truncated ({len(body)} of {expected} bytes)")
    return body
