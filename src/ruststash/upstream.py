"""Fetching from upstream origins with a pooled aiohttp client: origin mapping and failover, redirects,
a circuit breaker per origin. Library errors become UpstreamError here."""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import aiohttp

from .breaker import Breaker, State
from .errors import ConfigError, UpstreamError
from .inflight import UPSTREAM_ANSWERED
from .metrics import Metrics
from .response_times import ResponseTimes
from .settings import Origin, Resilience

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
# Bodies are held in memory on this path; crates and index files are KB to a few MB.
MAX_BODY_BYTES = 256 * 1024 * 1024
# Headers a client sends that upstream needs to answer the same way (cargo's sparse protocol marker, and
# the credentials of a private registry: such entries are keyed by the credential, see policy.scoped).
FORWARDED_REQUEST_HEADERS = ("user-agent", "accept", "cargo-protocol", "authorization", "cookie")
CREDENTIAL_HEADERS = ("authorization", "cookie")

# A whole response, checked by the caller: returns why it is unacceptable (try the next origin), or None.
Validator = Callable[["UpstreamResponse"], str | None]


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

    def known_origins(self, hosts: Iterable[str]) -> tuple[str, ...]:
        """`scheme://host:port` of every origin requests for `hosts` may go to (for metrics at zero)."""
        found: dict[str, None] = {}
        for host in hosts:
            for origin in self.origins("https", host, 443):
                found[origin.base] = None
        return tuple(found)

    def origins(self, scheme: str, host: str, port: int) -> tuple[Origin, ...]:
        mapped = self._upstreams.get(host.lower())
        return mapped if mapped else (Origin(scheme, host.lower(), port, ""),)

    def urls(self, url: str) -> tuple[str, ...]:
        """Every URL to try, in order, for an absolute `url`."""
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return tuple(o.url_for(path) for o in self.origins(parts.scheme, parts.hostname or "", port))


def origin_of(url: str) -> str:
    """`scheme://host:port` of an absolute URL, as `Origin.base` names it (the port always given)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port}"


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
    def __init__(
        self,
        mapping: UpstreamMap,
        ssl_context: ssl.SSLContext,
        user_agent: str,
        resilience: Resilience,
        metrics: Metrics,
        known_origins: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.mapping = mapping
        self._ssl_context = ssl_context
        self._user_agent = user_agent
        self._resilience = resilience
        self._metrics = metrics
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}
        self.response_times = ResponseTimes()
        for origin in known_origins:
            self.breaker(origin)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self._ssl_context, limit=64, limit_per_host=16, ttl_dns_cache=60)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(10.0, self._resilience.miss_timeout), sock_read=self._resilience.read_timeout
        )
        # No cookie jar: a cookie upstream set in answer to one client's request would otherwise go out with
        # every later request, other clients' included (a client's own Cookie header is forwarded as is).
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar()
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def breaker(self, origin: str) -> Breaker:
        """The breaker of one origin (scheme://host:port)."""
        if origin not in self._breakers:
            r = self._resilience
            self._breakers[origin] = Breaker(r.breaker_threshold, r.breaker_backoff, r.breaker_max_backoff)
        return self._breakers[origin]

    def answer_deadline(self, scheme: str, host: str, port: int, cap: float) -> float:
        """How long to wait for the first origin of `host` while a stored copy could answer (see
        response_times): at most `cap`."""
        origin = self.mapping.origins(scheme, host, port)[0].base
        return self.response_times.deadline(origin, cap)

    def marked_down(self, url: str) -> UpstreamError | None:
        """The error `get(url)` would raise without trying anything, because every origin it may go to is
        marked down and not yet due for a probe (counted as `get` counts it); None if one could be tried."""
        reasons = self._down_reasons(url)
        if reasons is None:
            return None
        for _ in reasons:
            self._metrics.upstream_error("circuit_open")
        return UpstreamError("; ".join(reasons), 503, "circuit_open")

    def is_marked_down(self, url: str) -> bool:
        """`marked_down` as a yes or no, counting nothing."""
        return self._down_reasons(url) is not None

    def _down_reasons(self, url: str) -> list[str] | None:
        """Why each origin `url` may go to is marked down; None if one could be tried."""
        now = self._clock()
        if not any(breaker.state(now) is State.OPEN for breaker in self._breakers.values()):
            return None  # the usual case, asked on every revalidation: no URL mapping needed to say so
        reasons = []
        for candidate in self.mapping.urls(url):
            breaker = self._breakers.get(origin_of(candidate))
            if breaker is None or breaker.state(now) is not State.OPEN:
                return None
            reasons.append(_down_reason(urlsplit(candidate).netloc, breaker, now))
        return reasons

    def breaker_states(self) -> dict[str, str]:
        now = self._clock()
        return {origin: breaker.state(now).value for origin, breaker in self._breakers.items()}

    async def get(self, url: str, headers: dict[str, str], validate: Validator | None = None) -> UpstreamResponse:
        """GET `url` whole from the first of its origins that gives an acceptable answer; 3xx are followed
        (through the same mapping). `validate` may reject a body (a corrupt mirror): the next origin is
        tried; the last origin's answer is returned unchecked, for the caller to refuse (a crate's digest is
        checked by the store as it is stored: with one origin, the body is not hashed on the event loop).

        Raises UpstreamError when no origin gave a complete response."""
        errors: list[str] = []
        last_error: UpstreamError | None = None
        candidates = self.mapping.urls(url)
        for index, candidate in enumerate(candidates):
            try:
                async with self._opened(candidate, headers) as response:
                    body = await response.read_all()
            except UpstreamError as exc:
                errors.append(exc.reason)
                last_error = exc
                continue
            result = UpstreamResponse(response.status, response.headers, body, response.url)
            if validate is None or index + 1 == len(candidates):
                return result  # the last origin's answer is the caller's to refuse: not checked here too
            problem = validate(result)
            if problem is not None:
                logger.warning("rejected %s: %s; trying the next origin", candidate, problem)
                errors.append(problem)
                continue
            return result
        assert last_error is not None
        raise UpstreamError("; ".join(errors), last_error.status, last_error.cause)

    @contextlib.asynccontextmanager
    async def stream(self, url: str, headers: dict[str, str]) -> AsyncIterator[StreamingResponse]:
        """Open `url` and yield once the response headers are in; the body is read through `chunks()`.
        Origins are tried in order until one answers (any HTTP status counts as an answer)."""
        errors: list[str] = []
        last_error: UpstreamError | None = None
        for candidate in self.mapping.urls(url):
            try:
                response = await self._open_following(candidate, headers)
            except UpstreamError as exc:
                errors.append(exc.reason)
                last_error = exc
                continue
            try:
                yield response
            finally:
                response.raw.release()
            return
        assert last_error is not None
        raise UpstreamError("; ".join(errors), last_error.status, last_error.cause)

    @contextlib.asynccontextmanager
    async def _opened(self, url: str, headers: dict[str, str]) -> AsyncIterator[StreamingResponse]:
        response = await self._open_following(url, headers)
        try:
            yield response
        finally:
            response.raw.release()

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
        parts = urlsplit(url)
        origin = origin_of(url)
        breaker = self.breaker(origin)
        now = self._clock()
        if not breaker.allow(now):
            error = UpstreamError(_down_reason(parts.netloc, breaker, now), 503, "circuit_open")
            self._metrics.upstream_error(error.cause)
            raise error
        send = {"user-agent": self._user_agent, **headers}
        started = time.monotonic()
        try:
            with _mapped_errors(parts.netloc):
                raw = await self._session.get(url, headers=send, allow_redirects=False)
        except UpstreamError as exc:
            self._failed(breaker, exc)
            raise
        except BaseException:
            breaker.probing = False  # cancelled: give the probe slot back, or the origin stays down
            raise
        answer_time = time.monotonic() - started
        self._metrics.observe_upstream(origin, answer_time)
        self.response_times.record(origin, answer_time)
        if (answered := UPSTREAM_ANSWERED.get()) is not None:
            answered.set()
        if raw.status >= 500:
            self._metrics.upstream_error("status_5xx")
            breaker.record_failure(self._clock())
        else:
            breaker.record_success()
        return StreamingResponse(raw, url, lambda exc: self._failed(breaker, exc))

    def _failed(self, breaker: Breaker, error: UpstreamError) -> None:
        self._metrics.upstream_error(error.cause)
        breaker.record_failure(self._clock())


class StreamingResponse:
    """An upstream response whose headers are in and whose body is still to be read."""

    def __init__(self, raw: aiohttp.ClientResponse, url: str, on_failure: Callable[[UpstreamError], None]) -> None:
        self.raw = raw
        self.url = url
        self.status = raw.status
        self.headers = tuple(raw.headers.items())
        self.content_length = raw.content_length if not raw.headers.get("content-encoding") else None
        self._on_failure = on_failure

    def headers_dict(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers}

    async def chunks(self, size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The body in chunks; raises UpstreamError if it breaks off or is shorter than Content-Length."""
        host = urlsplit(self.url).netloc
        received = 0
        try:
            with _mapped_errors(host):
                async for chunk in self.raw.content.iter_chunked(size):
                    received += len(chunk)
                    yield chunk
            if self.content_length is not None and received != self.content_length:
                raise UpstreamError(
                    f"{host}: body truncated ({received} of {self.content_length} bytes)", cause="truncated"
                )
        except UpstreamError as exc:
            self._on_failure(exc)
            raise

    async def read_all(self) -> bytes:
        """The whole body, up to MAX_BODY_BYTES."""
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise UpstreamError(f"{urlsplit(self.url).netloc}: body larger than {MAX_BODY_BYTES} bytes")
            parts.append(chunk)
        return b"".join(parts)


def _down_reason(netloc: str, breaker: Breaker, now: float) -> str:
    return f"{netloc}: marked down after repeated failures; next try in {breaker.retry_in(now):.0f}s"


@contextlib.contextmanager
def _mapped_errors(host: str) -> Iterator[None]:
    """aiohttp's exceptions become UpstreamError with a one-line reason, a status and a cause."""
    try:
        yield
    except UpstreamError:
        raise
    except aiohttp.ClientConnectorCertificateError as exc:
        raise UpstreamError(f"{host}: TLS certificate not trusted ({exc.certificate_error})", cause="tls") from exc
    except aiohttp.ClientSSLError as exc:
        raise UpstreamError(f"{host}: TLS error ({exc})", cause="tls") from exc
    except aiohttp.ClientConnectorDNSError as exc:
        raise UpstreamError(f"{host}: DNS lookup failed", cause="dns") from exc
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or exc.os_error
        raise UpstreamError(f"{host}: cannot connect ({reason})", cause="connect") from exc
    except TimeoutError as exc:
        raise UpstreamError(f"{host}: timed out", 504, "timeout") from exc
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamError(f"{host}: body cut short ({exc})", cause="truncated") from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise UpstreamError(f"{host}: connection closed before a full response", cause="reset") from exc
    except (aiohttp.ClientOSError, ConnectionResetError) as exc:
        raise UpstreamError(f"{host}: connection reset ({exc})", cause="reset") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(f"{host}: {type(exc).__name__}: {exc}") from exc
