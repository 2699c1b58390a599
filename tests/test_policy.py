"""The URL rules, table-driven: every cargo URL kind, both download forms, and what must pass untouched."""

from __future__ import annotations

import pytest

from ruststash.policy import (
    CRATES_IO,
    Kind,
    ManifestRef,
    Rule,
    carries_body,
    classify,
    client_protocol,
    config_prefix,
    index_path,
    is_registry_write,
    registry_from_dl,
    split_dist_prefix,
)

REGISTRIES = (CRATES_IO,)


@pytest.mark.parametrize(
    ("name", "path"),
    [("a", "1/a"), ("ab", "2/ab"), ("abc", "3/a/abc"), ("serde", "se/rd/serde"), ("Inflector", "in/fl/inflector")],
)
def test_index_path(name: str, path: str) -> None:
    assert index_path(name) == path


@pytest.mark.parametrize(
    ("method", "host", "path", "kind", "key"),
    [
        ("GET", "index.crates.io", "/config.json", Kind.CONFIG, "config:index.crates.io/config.json"),
        ("GET", "index.crates.io", "/1/a", Kind.INDEX, "index:index.crates.io/1/a"),
        ("GET", "index.crates.io", "/2/cc", Kind.INDEX, "index:index.crates.io/2/cc"),
        ("GET", "index.crates.io", "/3/l/log", Kind.INDEX, "index:index.crates.io/3/l/log"),
        ("GET", "index.crates.io", "/se/rd/serde", Kind.INDEX, "index:index.crates.io/se/rd/serde"),
        ("GET", "INDEX.crates.io", "/se/rd/serde_json", Kind.INDEX, "index:index.crates.io/se/rd/serde_json"),
        (
            "GET",
            "static.crates.io",
            "/crates/serde/1.0.200/download",
            Kind.CRATE,
            "crate:index.crates.io/se/rd/serde/1.0.200",
        ),
        (
            "GET",
            "static.crates.io",
            "/crates/serde/serde-1.0.200.crate",
            Kind.CRATE,
            "crate:index.crates.io/se/rd/serde/1.0.200",
        ),
        (
            "GET",
            "static.crates.io",
            "/crates/Inflector/0.11.4/download",
            Kind.CRATE,
            "crate:index.crates.io/in/fl/inflector/0.11.4",
        ),
        (
            "GET",
            "crates.io",
            "/api/v1/crates/serde/1.0.200/download",
            Kind.CRATE,
            "crate:index.crates.io/se/rd/serde/1.0.200",
        ),
        ("GET", "static.crates.io", "/crates/serde/1.0.0-beta.1+meta/download", Kind.CRATE, None),
        # not cached: other methods, the API, queries, escapes, dot segments, inconsistent index paths
        ("POST", "index.crates.io", "/se/rd/serde", Kind.PASS, ""),
        ("HEAD", "static.crates.io", "/crates/serde/1.0.0/download", Kind.PASS, ""),
        ("GET", "crates.io", "/api/v1/crates?q=serde", Kind.PASS, ""),
        ("GET", "crates.io", "/api/v1/crates/serde", Kind.PASS, ""),
        ("GET", "index.crates.io", "/se/rd/serde?x=1", Kind.PASS, ""),
        ("GET", "index.crates.io", "/se/rd/%73erde", Kind.PASS, ""),
        ("GET", "index.crates.io", "/../se/rd/serde", Kind.PASS, ""),
        ("GET", "index.crates.io", "/se/rd/../serde", Kind.PASS, ""),
        ("GET", "index.crates.io", "//se/rd/serde", Kind.PASS, ""),
        ("GET", "index.crates.io", "/xx/rd/serde", Kind.PASS, ""),
        ("GET", "index.crates.io", "/3/x/log", Kind.PASS, ""),
        ("GET", "index.crates.io", "/se/rd/Serde", Kind.PASS, ""),
        ("GET", "static.crates.io", "/crates/serde/serde-1.0.0.tar.gz", Kind.PASS, ""),
        ("GET", "static.crates.io", "/crates/serde/other-1.0.0.crate", Kind.PASS, ""),
        ("GET", "static.crates.io", "/crates/" + "a" * 65 + "/1.0.0/download", Kind.PASS, ""),
        ("GET", "static.crates.io", "/crates/-bad/1.0.0/download", Kind.PASS, ""),
    ],
)
def test_classify(method: str, host: str, path: str, kind: Kind, key: str | None) -> None:
    decision = classify(method, host, path, REGISTRIES)
    assert decision.kind is kind
    if key is not None:
        assert decision.key == key
    assert (decision.rule is Rule.NONE) == (kind is Kind.PASS)


def test_both_download_forms_share_one_key_and_name_the_index_file() -> None:
    a = classify("GET", "static.crates.io", "/crates/Inflector/0.11.4/download", REGISTRIES)
    b = classify("GET", "static.crates.io", "/crates/Inflector/Inflector-0.11.4.crate", REGISTRIES)
    assert a.key == b.key
    assert a.crate is not None and a.crate.name == "Inflector" and a.crate.version == "0.11.4"
    assert a.crate.index_key == "index:index.crates.io/in/fl/inflector"


@pytest.mark.parametrize(
    ("dl", "path", "expected"),
    [
        ("https://dl.example.com/api/v1/crates", "/api/v1/crates/foo/1.2.3/download", ("foo", "1.2.3")),
        (
            "https://dl.example.com/files/{crate}/{crate}-{version}.crate",
            "/files/Foo/Foo-1.2.3.crate",
            ("Foo", "1.2.3"),
        ),
        ("https://dl.example.com/{prefix}/{crate}/{version}", "/fo/o_/foo_bar/1.0.0", ("foo_bar", "1.0.0")),
        ("https://dl.example.com/files/{crate}/{crate}-{version}.crate", "/files/Foo/Bar-1.2.3.crate", None),
    ],
)
def test_private_registry_downloads_follow_config_dl(dl: str, path: str, expected: tuple[str, str] | None) -> None:
    registry = registry_from_dl("registry.example.com", "/index", dl)
    assert registry is not None
    decision = classify("GET", "dl.example.com", path, (CRATES_IO, registry))
    if expected is None:
        assert decision.kind is Kind.PASS
        return
    assert decision.kind is Kind.CRATE and decision.crate is not None
    assert (decision.crate.name, decision.crate.version) == expected
    assert decision.crate.index_host == "registry.example.com"
    assert decision.crate.index_path.startswith("/index/")


def test_registry_from_dl_rejects_what_it_cannot_match() -> None:
    assert registry_from_dl("r.example", "", "ftp://x/y") is None
    assert registry_from_dl("r.example", "", "https://x.example/{crate}/latest") is None


def test_config_prefix() -> None:
    assert config_prefix("/config.json") == ""
    assert config_prefix("/api/v1/index/config.json") == "/api/v1/index"
    assert config_prefix("/api/v1/index/other.json") is None


SRL = "static.rust-lang.org"


@pytest.mark.parametrize(
    ("path", "kind", "key", "rule", "min_lifetime"),
    [
        (
            "/dist/channel-rust-stable.toml",
            Kind.MANIFEST,
            "manifest:" + SRL + "/dist/channel-rust-stable.toml",
            Rule.REVALIDATE,
            0,
        ),
        (
            "/dist/channel-rust-stable.toml.sha256",
            Kind.MANIFEST_SHA256,
            "manifest:" + SRL + "/dist/channel-rust-stable.toml",
            Rule.REVALIDATE,
            0,
        ),
        ("/dist/channel-rust-nightly.toml", Kind.MANIFEST, None, Rule.REVALIDATE, 0),
        ("/dist/channel-rust-1.95.toml", Kind.MANIFEST, None, Rule.REVALIDATE, 0),
        ("/dist/channel-rust-1.95.0.toml", Kind.MANIFEST, None, Rule.REVALIDATE, 86400),
        ("/dist/channel-rust-1.95.0.toml.sha256", Kind.MANIFEST_SHA256, None, Rule.REVALIDATE, 86400),
        ("/dist/2026-05-01/channel-rust-nightly.toml", Kind.MANIFEST, None, Rule.IMMUTABLE, 86400),
        (
            "/dist/2026-05-01/channel-rust-nightly.toml.sha256",
            Kind.MANIFEST_SHA256,
            "manifest:" + SRL + "/dist/2026-05-01/channel-rust-nightly.toml",
            Rule.IMMUTABLE,
            86400,
        ),
        ("/dist/channel-rust-stable.toml.asc", Kind.DIST_FILE, None, Rule.REVALIDATE, 0),
        (
            "/dist/2026-04-14/rustc-1.95.0-x86_64-unknown-linux-gnu.tar.xz",
            Kind.ARCHIVE,
            "archive:" + SRL + "/dist/2026-04-14/rustc-1.95.0-x86_64-unknown-linux-gnu.tar.xz",
            Rule.IMMUTABLE,
            0,
        ),
        ("/dist/2026-04-14/rust-std-1.95.0-wasm32-unknown-unknown.tar.gz", Kind.ARCHIVE, None, Rule.IMMUTABLE, 0),
        (
            "/dist/2026-04-14/rustc-1.95.0-x86_64-unknown-linux-gnu.tar.xz.sha256",
            Kind.DIST_FILE,
            None,
            Rule.IMMUTABLE,
            0,
        ),
        ("/rustup/release-stable.toml", Kind.DIST_FILE, None, Rule.REVALIDATE, 0),
        ("/rustup/dist/x86_64-unknown-linux-gnu/rustup-init", Kind.DIST_FILE, None, Rule.REVALIDATE, 0),
        ("/rustup/dist/x86_64-pc-windows-msvc/rustup-init.exe.sha256", Kind.DIST_FILE, None, Rule.REVALIDATE, 0),
        ("/rustup/archive/1.29.0/x86_64-unknown-linux-gnu/rustup-init", Kind.ARCHIVE, None, Rule.IMMUTABLE, 0),
        ("/rustup/archive/1.29.0/x86_64-unknown-linux-gnu/rustup-init.sha256", Kind.DIST_FILE, None, Rule.IMMUTABLE, 0),
        ("/dist/channel-rust-stable.toml?x=1", Kind.PASS, None, Rule.NONE, 0),
        ("/dist/2026-4-14/rustc.tar.xz", Kind.PASS, None, Rule.NONE, 0),
        ("/dist/../etc/passwd", Kind.PASS, None, Rule.NONE, 0),
        ("/dist/2026-04-14/../../x.tar.xz", Kind.PASS, None, Rule.NONE, 0),
        ("/rustup/dist/x86_64-unknown-linux-gnu/other", Kind.PASS, None, Rule.NONE, 0),
        ("/dist/channel-rust-stable.txt", Kind.PASS, None, Rule.NONE, 0),
    ],
)
def test_classify_rustup(path: str, kind: Kind, key: str | None, rule: Rule, min_lifetime: float) -> None:
    decision = classify("GET", SRL, path, REGISTRIES)
    assert (decision.kind, decision.rule, decision.min_lifetime) == (kind, rule, min_lifetime)
    if key is not None:
        assert decision.key == key
    if kind in (Kind.MANIFEST, Kind.MANIFEST_SHA256):
        assert decision.manifest is not None
        assert decision.manifest.sha256_path == decision.manifest.toml_path + ".sha256"


MIRROR = "mirror.example"


@pytest.mark.parametrize(
    ("path", "kind", "key"),
    [
        ("/rust-static/dist/channel-rust-stable.toml.sha256", Kind.MANIFEST_SHA256,
         "manifest:" + MIRROR + "/rust-static/dist/channel-rust-stable.toml"),
        ("/a/b/dist/2026-04-14/rustc-1.95.0-x86_64-unknown-linux-gnu.tar.xz", Kind.ARCHIVE,
         "archive:" + MIRROR + "/a/b/dist/2026-04-14/rustc-1.95.0-x86_64-unknown-linux-gnu.tar.xz"),
        ("/rust-static/rustup/release-stable.toml", Kind.DIST_FILE,
         "dist:" + MIRROR + "/rust-static/rustup/release-stable.toml"),
        ("/rust-static/rustup/dist/x86_64-unknown-linux-gnu/rustup-init", Kind.DIST_FILE, None),
        ("/rust-static/rustup/archive/1.29.0/x86_64-unknown-linux-gnu/rustup-init", Kind.ARCHIVE, None),
        ("/rust-static/dist/../dist/channel-rust-stable.toml", Kind.PASS, None),
        ("/rust static/dist/channel-rust-stable.toml", Kind.PASS, None),
        ("/rust-static/dist/other.txt", Kind.PASS, None),
        ("/dist/config.json", Kind.CONFIG, None),  # a sparse registry below /dist/ is a registry
    ],
)  # fmt: skip
def test_classify_a_rustup_mirror_below_a_path_prefix(path: str, kind: Kind, key: str | None) -> None:
    decision = classify("GET", MIRROR, path, REGISTRIES)
    assert decision.kind is kind
    if key is not None:
        assert decision.key == key
    if decision.manifest is not None:
        assert decision.manifest.prefix == "/rust-static"
        assert decision.manifest.file_name == "channel-rust-stable.toml"


def test_an_archive_is_asked_for_below_its_manifests_mirror_prefix() -> None:
    at_root = ManifestRef("/dist/channel-rust-stable.toml")
    below = ManifestRef("/rust-static/dist/channel-rust-stable.toml", "/rust-static")
    listed = "/dist/2026-11-20/rustc-1.95.0-x86_64-unknown-linux-gnu.tar.xz"
    assert at_root.archive_request_path(listed) == listed
    assert below.archive_request_path(listed) == "/rust-static" + listed
    assert below.archive_request_path("/rust-static" + listed) == "/rust-static" + listed  # URLs rewritten
    assert below.archive_request_path("/elsewhere/file.tar.xz") == "/elsewhere/file.tar.xz"  # not the tree


def test_split_dist_prefix_takes_the_first_dist_or_rustup_segment() -> None:
    assert split_dist_prefix("/dist/x") == ("", "/dist/x")
    assert split_dist_prefix("/m/rustup/dist/t/rustup-init") == ("/m", "/rustup/dist/t/rustup-init")
    assert split_dist_prefix("/a/dist/b/dist/c") == ("/a", "/dist/b/dist/c")
    assert split_dist_prefix("/distx/y") is None
    assert split_dist_prefix("/m/dist") is None


def test_client_protocol_is_http1_only_for_hosts_of_large_files_that_offer_it() -> None:
    assert client_protocol("static.rust-lang.org", [b"h2", b"http/1.1"]) == b"http/1.1"
    assert client_protocol("Static.Rust-Lang.org", [b"http/1.1"]) == b"http/1.1"
    assert client_protocol("static.rust-lang.org", [b"h2"]) is None  # mitmproxy chooses (h2)
    assert client_protocol("index.crates.io", [b"h2", b"http/1.1"]) is None
    assert client_protocol(None, [b"h2", b"http/1.1"]) is None
    mirror = frozenset({"static.rust-lang.org", "mirror.example"})
    assert client_protocol("mirror.example", [b"h2", b"http/1.1"], mirror) == b"http/1.1"
    assert client_protocol("mirror.example", [b"h2", b"http/1.1"]) is None


@pytest.mark.parametrize(
    ("method", "path", "write"),
    [
        ("PUT", "/api/v1/crates/new", True),  # cargo publish
        ("DELETE", "/api/v1/crates/serde/1.0.219/yank", True),
        ("PUT", "/api/v1/crates/serde/1.0.219/unyank", True),  # cargo yank --undo
        ("PUT", "/registry/api/v1/crates/new", True),  # a registry whose API lives under a path
        ("GET", "/api/v1/crates/new", False),
        ("GET", "/api/v1/crates/serde/1.0.219/download", False),
        ("PUT", "/api/v1/crates/serde/owners", False),  # owners change nothing in the index
        ("PUT", "/api/v1/crates/new?x=1", False),
        ("DELETE", "/api/v1/crates/../yank", False),
    ],
)
def test_registry_writes(method: str, path: str, write: bool) -> None:
    assert is_registry_write(method, path) is write


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({}, False),
        ({"content-length": "0"}, False),
        ({"content-length": "12"}, True),
        ({"transfer-encoding": "chunked"}, True),
        ({"content-length": " 0 "}, False),
    ],
)
def test_a_request_with_a_body_is_told_apart(headers: dict[str, str], body: bool) -> None:
    assert carries_body(headers) is body
