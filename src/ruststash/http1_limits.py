"""Two gaps in mitmproxy's HTTP/1 server that a client must not be able to use against a shared proxy,
closed by wrapping its layer methods (mitmproxy is pinned in constraints.txt; see docs/security.md):

- it buffers a request head without bound ("FIXME: protect against header size DoS" in its source): a
  client sending an endless header line grows the proxy's memory by as much as it sends;
- a chunked request body with trailers raises NotImplementedError inside the layer (a traceback, and the
  client is left hanging).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1
from mitmproxy.proxy.layers.http._base import ReceiveHttp

# cargo and rustup send heads of a few hundred bytes.
MAX_REQUEST_HEAD = 64 * 1024
_INSTALLED = "_ruststash_limits"


def install() -> None:
    server = _http1.Http1Server
    if getattr(server, _INSTALLED, False):
        return
    read_headers = server.read_headers
    read_body = _http1.Http1Connection.read_body

    def limited_read_headers(self: Any, event: events.ConnectionEvent) -> Generator[Any, Any, None]:
        if isinstance(event, events.DataReceived) and len(self.buf) > MAX_REQUEST_HEAD:
            head_end = bytes(self.buf)[: MAX_REQUEST_HEAD + 4].find(b"\r\n\r\n")
            if head_end < 0:
                body = b"ruststash: request head larger than 64 KiB\n"
                yield commands.SendData(self.conn, _http1.make_error_response(431, body.decode()))
                yield commands.CloseConnection(self.conn)
                self.state = self.done
                return
        yield from read_headers(self, event)

    def read_body_without_trailers(self: Any, event: events.Event) -> Generator[Any, Any, None]:
        try:
            yield from read_body(self, event)
        except NotImplementedError as exc:  # "HTTP trailers are not implemented yet."
            yield commands.CloseConnection(self.conn)
            yield ReceiveHttp(
                self.ReceiveProtocolError(self.stream_id, f"unsupported: {exc}", code=self.ReceiveProtocolError.code)
            )
            self.state = self.done

    server.read_headers = limited_read_headers  # type: ignore[method-assign]
    _http1.Http1Connection.read_body = read_body_without_trailers  # type: ignore[method-assign]
    setattr(server, _INSTALLED, True)
