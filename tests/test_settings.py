from __future__ import annotations

import re

import pytest

from ruststash.errors import ConfigError
from ruststash.settings import (
    build_cache_hosts,
    build_http1_hosts,
    build_upstreams,
    parse_cache_host,
    parse_host_port,
)


def test_parse_host_port() -> None:
    assert str(parse_host_port("127.0.0.1:3128", "--listen")) == "127.0.0.1:3128"
    assert str(parse_host_port("[::1]:3128", "--listen")) == "[::1]:3128"
    assert parse_host_port(":3128", "--listen").host == "0.0.0.0"
    assert parse_host_port("0.0.0.0:3128", "--listen").client_url() == "http://127.0.0.1:3128"


@pytest.mark.parametrize("value", ["3128", "127.0.0.1:0", "127.0.0.1:70000", "example.com:80", "1.2.3.4:x"])
def test_parse_host_port_rejects(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_host_port(value, "--listen")


def test_cache_host_patterns_are_anchored() -> None:
    pattern = parse_cache_host("crates.io").allow_pattern()
    assert re.search(pattern, "crates.io:443")
    assert not re.search(pattern, "evilcrates.io:443")
    assert not re.search(pattern, "crates.io.example:443")
    with_port = parse_cache_host("registry.example:8443").allow_pattern()
    assert re.search(with_port, "registry.example:8443") and not re.search(with_port, "registry.example:443")


def test_default_cache_hosts_and_extras() -> None:
    hosts = build_cache_hosts(("Registry.Example",))
    assert [h.host for h in hosts] == [
        "index.crates.io",
        "static.crates.io",
        "crates.io",
        "static.rust-lang.org",
        "registry.example",
    ]
    with pytest.raises(ConfigError):
        build_cache_hosts(("bad host!",))


def test_http1_hosts_add_cached_hosts_to_the_default() -> None:
    cached = build_cache_hosts(("mirror.example",))
    assert build_http1_hosts((), cached) == {"static.rust-lang.org"}
    assert build_http1_hosts((" Mirror.Example",), cached) == {"static.rust-lang.org", "mirror.example"}
    with pytest.raises(ConfigError, match="not a cached host"):
        build_http1_hosts(("other.example",), cached)


def test_upstreams() -> None:
    upstreams = build_upstreams(("index.crates.io=https://127.0.0.1:8443,https://mirror.example/cratesio/",))
    first, second = upstreams["index.crates.io"]
    assert first.url_for("/se/rd/serde") == "https://127.0.0.1:8443/se/rd/serde"
    assert second.url_for("/se/rd/serde") == "https://mirror.example/cratesio/se/rd/serde"
    for bad in ("index.crates.io", "=https://x", "h=ftp://x", "h=https://x?q=1"):
        with pytest.raises(ConfigError):
            build_upstreams((bad,))
    with pytest.raises(ConfigError, match="twice"):
        build_upstreams(("h=https://a", "h=https://b"))
