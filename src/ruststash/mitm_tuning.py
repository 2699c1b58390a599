"""Per-request work that mitmproxy does only to check itself, switched off.

mitmproxy type-checks every field of every request and response it builds (`MessageData.__post_init__`,
which exists only when Python runs without -O): about 6 % of the proxy's CPU on a warm cargo run. The
values come from mitmproxy's own parsers and from our addon, whose types mypy checks. Other assertions
stay: -O would drop those too, and they guard mitmproxy's state machines. Re-check when mitmproxy is
upgraded (it is pinned in constraints.txt).
"""

from __future__ import annotations

from mitmproxy import http


def install() -> None:
    if "__post_init__" in vars(http.MessageData):
        http.MessageData.__post_init__ = _unchecked  # type: ignore[method-assign]


def _unchecked(self: http.MessageData) -> None:
    pass
