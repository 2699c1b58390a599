"""Property tests (hypothesis) for the pure parts: URL classification and cache keys, the option parsers,
the HTTP freshness arithmetic and the sparse-index and channel-manifest readers.

Every test is bounded (max_examples, deadline) and keeps no example database, so a run writes nothing.
"""

from __future__ import annotations

import re
import string

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ruststash import freshness, rust_manifest, sparse_index
from ruststash.errors import ConfigError
from ruststash.policy import (
    CRATES_IO,
    Decision,
    Kind,
    Rule,
    classify,
    config_prefix,
    index_path,
    registry_from_dl,
)
from ruststash.settings import DEFAULT_CACHE_HOSTS, parse_cache_host, parse_host_port, parse_size, parse_upstream

# A second registry with its own hosts, so keys of two registries are compared too.
OTHER_REGISTRY = registry_from_dl("index.example.org", "/reg", "https://dl.example.org/files")
assert OTHER_REGISTRY is not None
REGISTRIES = (CRATES_IO, OTHER_REGISTRY)
HOSTS = (*DEFAULT_CACHE_HOSTS, "index.example.org", "dl.example.org")
MAX_KEY_LENGTH = 512

FAST = settings(max_examples=300, deadline=1000, database=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(max_examples=150, deadline=1000, database=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies -------------------------------------------------------------------------------------------


@st.composite
def any_case(draw: st.DrawFn, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if flip else c for c, flip in zip(text, flips, strict=True))


def case_variants(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return strategy.flatmap(any_case)


hosts = case_variants(st.sampled_from(HOSTS))
methods = st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "get", "Get"]) | st.text(
    max_size=8
)
# Names from a small pool (so that lists of URLs collide often) and from the whole name space.
NAME_POOL = ("a", "ab", "abc", "abcd", "serde", "serde_json", "serde-json", "Inflector", "inflector", "x_-y")
crate_names = st.sampled_from(NAME_POOL).flatmap(any_case) | st.from_regex(
    r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True
)
lower_names = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)
versions = st.sampled_from(["1.0.0", "0.1.0", "1.0.0-beta.1+meta", "2"]) | st.from_regex(
    r"[0-9][0-9A-Za-z.+-]{0,20}", fullmatch=True
)
dates = st.from_regex(r"20[0-9]{2}-[01][0-9]-[0-3][0-9]", fullmatch=True)
channels = st.sampled_from(["stable", "beta", "nightly", "1.95", "1.95.0", "1.95.0-beta", "1.95.0-beta.2"])
file_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,40}", fullmatch=True)
archive_suffixes = st.sampled_from(["", ".tar.gz", ".tar.xz", ".tar.zst", ".zip", ".msi", ".pkg", ".exe", ".sha256"])
triples = st.sampled_from(["x86_64-unknown-linux-gnu", "aarch64-apple-darwin", "x86_64-pc-windows-msvc"])
prefixes = st.sampled_from(["", "/api", "/reg", "/a.b", "/x~y/z"])


@st.composite
def cacheable_urls(draw: st.DrawFn) -> tuple[str, str]:
    """(host, path) pairs of the shapes classify caches (it may still PASS some of them)."""
    name, version = draw(crate_names), draw(versions)
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return draw(st.sampled_from(["index.crates.io", "index.example.org"])), draw(prefixes) + "/config.json"
    if choice == 1:
        return draw(st.sampled_from(["index.crates.io", "index.example.org"])), draw(prefixes) + "/" + index_path(
            draw(lower_names)
        )
    if choice == 2:
        return "static.crates.io", f"/crates/{name}/{version}/download"
    if choice == 3:
        return "static.crates.io", f"/crates/{name}/{name}-{version}.crate"
    if choice == 4:
        return "crates.io", f"/api/v1/crates/{name}/{version}/download"
    if choice == 5:
        return "dl.example.org", f"/files/{name}/{version}/download"
    if choice == 6:
        date = draw(st.none() | dates)
        ext = draw(st.sampled_from(["", ".sha256", ".asc"]))
        return "static.rust-lang.org", f"/dist/{date + '/' if date else ''}channel-rust-{draw(channels)}.toml{ext}"
    if choice == 7:
        return "static.rust-lang.org", f"/dist/{draw(dates)}/{draw(file_names)}{draw(archive_suffixes)}"
    if choice == 8:
        ext = draw(st.sampled_from(["", ".exe"])) + draw(st.sampled_from(["", ".sha256"]))
        return "static.rust-lang.org", f"/rustup/dist/{draw(triples)}/rustup-init{ext}"
    ext = draw(st.sampled_from(["", ".exe"])) + draw(st.sampled_from(["", ".sha256"]))
    return "static.rust-lang.org", f"/rustup/archive/{draw(versions)}/{draw(triples)}/rustup-init{ext}"


# Path characters that matter to the rules, plus every kind of trouble.
_PATH_ALPHABET = string.ascii_letters + string.digits + "/._-+~%?#\\\x00 \t\n\r\x0b\x0cé☃\u0661"
odd_paths = st.text(alphabet=_PATH_ALPHABET, max_size=80) | st.text(max_size=80)
paths = cacheable_urls().map(lambda hp: hp[1]) | odd_paths


# --- helpers ----------------------------------------------------------------------------------------------


def key_problems(key: str) -> list[str]:
    problems = []
    if any(segment in (".", "..") for segment in key.split("/")):
        problems.append("a dot segment")
    for bad in ("\x00", "%", "\\"):
        if bad in key:
            problems.append(repr(bad))
    if any(c.isspace() for c in key):
        problems.append("whitespace")
    if not key.isascii():
        problems.append("non-ASCII")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        problems.append("a control character")
    if key.startswith("/"):
        problems.append("a leading /")
    if len(key) >= MAX_KEY_LENGTH:
        problems.append(f"{len(key)} characters")
    return problems


_CRATE_FORMS = re.compile(
    r"/(?:crates|api/v1/crates|files)/(?P<name>[^/]+)/(?:(?P<v1>[^/]+)/download|(?P=name)-(?P<v2>[^/]+)\.crate)"
)


def identity(host: str, path: str) -> tuple[str, ...]:
    """What a cacheable URL names, worked out without classify: URLs with one identity may share a key
    (both crate download forms and the API download; a manifest and its .sha256); others must not."""
    host = host.lower()
    if m := _CRATE_FORMS.fullmatch(path):
        registry = "crates.io" if host in ("static.crates.io", "crates.io") else host
        return ("crate", registry, m.group("name").lower(), m.group("v1") or m.group("v2"))
    if path.startswith("/dist/") and path.endswith(".toml.sha256"):
        return ("manifest", host, path.removesuffix(".sha256"))
    if path.startswith("/dist/") and path.endswith(".toml"):
        return ("manifest", host, path)
    return ("url", host, path)


# --- classify -------------------------------------------------------------------------------------------


@FAST
@given(method=methods, host=hosts, path=paths)
@example(method="GET", host="index.crates.io", path="/se/rd/serde\n")
@example(method="GET", host="static.rust-lang.org", path="/dist/2024-01-01/rust-1.0.tar.gz\n")
def test_classify_is_total_deterministic_and_keys_are_clean(method: str, host: str, path: str) -> None:
    decision = classify(method, host, path, REGISTRIES)
    assert isinstance(decision, Decision)
    assert classify(method, host, path, REGISTRIES) == decision
    if decision.kind is Kind.PASS:
        assert decision.key == ""
        assert decision.rule is Rule.NONE
        return
    assert method == "GET"
    prefix = Kind.MANIFEST if decision.kind is Kind.MANIFEST_SHA256 else decision.kind
    assert decision.key.startswith(f"{prefix}:{host.lower()}") or decision.kind is Kind.CRATE
    assert decision.rule is not Rule.NONE
    assert not key_problems(decision.key), (path, decision.key, key_problems(decision.key))


@FEWER
@given(urls=st.lists(cacheable_urls() | st.tuples(hosts, paths), max_size=40))
def test_different_urls_share_a_key_only_when_documented(urls: list[tuple[str, str]]) -> None:
    by_key: dict[str, set[tuple[str, ...]]] = {}
    for host, path in urls:
        decision = classify("GET", host, path, REGISTRIES)
        if decision.kind is not Kind.PASS:
            by_key.setdefault(decision.key, set()).add(identity(host, path))
    shared = {key: ids for key, ids in by_key.items() if len(ids) > 1}
    assert not shared, shared


@FAST
@given(host_path=cacheable_urls(), data=st.data())
def test_cacheable_shapes_are_cached_and_keyed_by_kind(host_path: tuple[str, str], data: st.DataObject) -> None:
    host, path = host_path
    host = data.draw(any_case(host))
    decision = classify("GET", host, path, REGISTRIES)
    if decision.kind is Kind.PASS:
        return
    assert decision.key == classify("GET", host.lower(), path, REGISTRIES).key
    if decision.kind is Kind.CRATE:
        assert decision.crate is not None
        assert decision.key.startswith(f"crate:{decision.crate.index_host}")
    if decision.kind in (Kind.MANIFEST, Kind.MANIFEST_SHA256):
        toml = path.removesuffix(".sha256")
        assert classify("GET", host, toml, REGISTRIES).key == decision.key
        assert classify("GET", host, toml + ".sha256", REGISTRIES).key == decision.key


_INJECTIONS = st.sampled_from(
    ["?", "?a=b", "#", "#frag", "%", "%2e", "%2F", "%41", "\\", "\x00", "é", "☃", "\u0661", "\U0001f980"]
)


@FAST
@given(host_path=cacheable_urls(), injection=_INJECTIONS, data=st.data())
def test_query_escape_backslash_nul_non_ascii_anywhere_is_pass(
    host_path: tuple[str, str], injection: str, data: st.DataObject
) -> None:
    host, path = host_path
    at = data.draw(st.integers(0, len(path)))
    mangled = path[:at] + injection + path[at:]
    assert classify("GET", host, mangled, REGISTRIES).kind is Kind.PASS, mangled


@FAST
@given(host_path=cacheable_urls(), segment=st.sampled_from([".", "..", ""]), data=st.data())
def test_dot_and_empty_segments_are_pass(host_path: tuple[str, str], segment: str, data: st.DataObject) -> None:
    host, path = host_path
    slashes = [i for i, c in enumerate(path) if c == "/"]
    at = data.draw(st.sampled_from(slashes))
    mangled = path[: at + 1] + segment + "/" + path[at + 1 :]
    assert classify("GET", host, mangled, REGISTRIES).kind is Kind.PASS, mangled
    if segment:  # a trailing dot segment too: `/dist/2024-01-01/..`
        assert classify("GET", host, path + "/" + segment, REGISTRIES).kind is Kind.PASS


@FAST
@given(host_path=cacheable_urls(), space=st.sampled_from([" ", "\t", "\n", "\r", "\x0b", "\x0c"]), data=st.data())
@example(host_path=("index.crates.io", "/config.json"), space="\n", data=None)
def test_whitespace_never_reaches_a_key(host_path: tuple[str, str], space: str, data: st.DataObject | None) -> None:
    host, path = host_path
    at = len(path) if data is None else data.draw(st.integers(0, len(path)))
    mangled = path[:at] + space + path[at:]
    decision = classify("GET", host, mangled, REGISTRIES)
    assert decision.kind is Kind.PASS, (mangled, decision)


@FAST
@given(path=st.text(max_size=40), prefix=prefixes)
def test_relative_targets_are_pass(path: str, prefix: str) -> None:
    for target in (path.lstrip("/"), "http://index.crates.io" + prefix + "/config.json", "*"):
        if not target.startswith("/"):
            assert classify("GET", "index.crates.io", target, REGISTRIES).kind is Kind.PASS


@FAST
@given(name=crate_names, prefix=st.sampled_from(["", "/api"]))
def test_index_path_agrees_with_classify(name: str, prefix: str) -> None:
    path = f"{prefix}/{index_path(name)}"
    assert index_path(name) == index_path(name.lower())
    assert not index_path(name).startswith("/")
    decision = classify("GET", "index.crates.io", path, REGISTRIES)
    if name == name.lower():
        assert decision.kind is Kind.INDEX
        assert decision.key.endswith(path)
        assert decision.key == f"index:index.crates.io{path}"
    assert CRATES_IO.crate_ref(name, "1.0.0").index_path == "/" + index_path(name)
    assert config_prefix(f"{prefix}/config.json") == prefix


@FAST
@given(name=crate_names, version=versions)
def test_download_keys_ignore_name_case_and_form(name: str, version: str) -> None:
    lower = name.lower()
    keys = {
        classify("GET", "static.crates.io", f"/crates/{n}/{v}", REGISTRIES).key
        for n in (name, lower)
        for v in (f"{version}/download", f"{n}-{version}.crate")
    }
    keys.add(classify("GET", "crates.io", f"/api/v1/crates/{name}/{version}/download", REGISTRIES).key)
    assert len(keys) == 1
    (key,) = keys
    assert key == f"crate:index.crates.io/{index_path(lower)}/{version}"
    other = classify("GET", "dl.example.org", f"/files/{name}/{version}/download", REGISTRIES)
    assert other.kind is Kind.CRATE
    assert other.key == f"crate:index.example.org/reg/{index_path(lower)}/{version}"
    assert other.key != key


@FAST
@given(name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{64,100}", fullmatch=True), version=versions)
def test_overlong_names_are_pass(name: str, version: str) -> None:
    for host, path in (
        ("static.crates.io", f"/crates/{name}/{version}/download"),
        ("static.crates.io", f"/crates/{name}/{name}-{version}.crate"),
        ("crates.io", f"/api/v1/crates/{name}/{version}/download"),
        ("dl.example.org", f"/files/{name}/{version}/download"),
        ("index.crates.io", "/" + index_path(name)),
    ):
        assert classify("GET", host, path, REGISTRIES).kind is Kind.PASS, path


@FAST
@given(dl=st.text(max_size=80) | st.from_regex(r"https?://[a-z.]{1,12}(:[0-9]{1,5})?(/[{}a-z-]{0,30}){0,4}"))
def test_registry_from_dl_never_raises(dl: str) -> None:
    registry = registry_from_dl("index.example.org", "", dl)
    if registry is not None:
        assert registry.dl_patterns
        decision = classify("GET", registry.dl_host, "/anything/at/all", (registry,))
        assert isinstance(decision, Decision)


# --- settings parsers: ConfigError or a value, nothing else ----------------------------------------------

_DIGITS = st.from_regex(r"[0-9]{1,5000}", fullmatch=True)
_ODD_DIGITS = st.text(alphabet="0123456789²³¹\u0661\u0662\u00bd\uff11", min_size=1, max_size=8)
_option_text = st.text(max_size=60) | st.text(alphabet="0123456789:[]./=,abcfhpst \u0661²", max_size=40)


def config_error_or_value(function, *args):  # type: ignore[no-untyped-def]
    try:
        return function(*args)
    except ConfigError:
        return None


@FAST
@given(text=_option_text | _DIGITS.map(lambda d: f"127.0.0.1:{d}") | _ODD_DIGITS.map(lambda d: f"127.0.0.1:{d}"))
@example(text="127.0.0.1:" + "1" * 5000)
def test_parse_host_port_raises_only_config_error(text: str) -> None:
    value = config_error_or_value(parse_host_port, text, "--listen")
    if value is not None:
        assert 0 < value.port < 65536


@FAST
@given(text=_option_text | _ODD_DIGITS.map(lambda d: f"crates.io:{d}") | _DIGITS.map(lambda d: f"crates.io:{d}"))
@example(text="crates.io:²")
@example(text="crates.io:" + "1" * 5000)
def test_parse_cache_host_raises_only_config_error(text: str) -> None:
    value = config_error_or_value(parse_cache_host, text)
    if value is not None:
        assert value.port is None or 0 < value.port < 65536


_URLS = st.from_regex(r"https?://[\[\]a-z0-9.:é]{0,20}(/[a-z]{0,5})?([?#][a-z]{0,3})?", fullmatch=True)


@FAST
@given(text=_option_text | _URLS.map(lambda u: f"crates.io={u}"))
@example(text="crates.io=http://[oops")
@example(text="crates.io=http://[::1")
@example(text="crates.io=http://a\uff0ab/")
def test_parse_upstream_raises_only_config_error(text: str) -> None:
    value = config_error_or_value(parse_upstream, text)
    if value is not None:
        host, origins = value
        assert host == host.lower()
        for origin in origins:
            assert origin.scheme in ("http", "https")
            assert 0 < origin.port < 65536


@FAST
@given(
    text=_option_text
    | st.from_regex(r"\s*[0-9]{1,400}(\.[0-9]{1,5})?\s*(b|kb|KiB|MB|GiB|tb|TiB|x)?\s*", fullmatch=True)
)
@example(text="9" * 400)
@example(text="9" * 300 + "TiB")
def test_parse_size_raises_only_config_error(text: str) -> None:
    value = config_error_or_value(parse_size, text)
    if value is not None:
        assert isinstance(value, int)
        assert value > 0


# --- freshness: header strings from clients and upstreams --------------------------------------------------

_header_text = st.text(max_size=80) | st.text(alphabet='0123456789²\u0661,="-ancgemosxhitupblvdrwGMT :+', max_size=60)
_dates = st.from_regex(
    r"(Mon, )?[0-9]{1,25} (Jan|Feb|Xyz) [0-9]{1,25} [0-9]{1,3}:[0-9]{1,3}:[0-9]{1,3} (GMT|[+-][0-9]{1,25})?",
    fullmatch=True,
)


@FAST
@given(value=st.none() | _header_text | _DIGITS.map(lambda d: f"max-age={d}") | _ODD_DIGITS.map("s-maxage={}".format))
@example(value="max-age=²")
@example(value="max-age=" + "9" * 5000)
def test_cache_control_never_raises(value: str | None) -> None:
    cc = freshness.parse_cache_control(value)
    lifetime = freshness.freshness_lifetime(value)
    assert lifetime >= 0
    assert cc.max_age is None or cc.max_age >= 0


@FAST
@given(
    inm=st.none() | _header_text,
    ims=st.none() | _header_text | _dates,
    etag=st.none() | _header_text,
    last_modified=st.none() | _header_text | _dates,
)
@example(
    inm=None,
    ims="Mon, 01 Jan 99999999999999999999 00:00:00 GMT",
    etag=None,
    last_modified="Mon, 01 Jan 2024 00:00:00 GMT",
)
@example(
    inm=None,
    ims="Mon, 01 Jan 2024 00:00:00 +99999999999999999999",
    etag=None,
    last_modified="Mon, 01 Jan 2024 00:00:00 GMT",
)
def test_conditional_headers_never_raise(
    inm: str | None, ims: str | None, etag: str | None, last_modified: str | None
) -> None:
    headers = {name: value for name, value in (("if-none-match", inm), ("if-modified-since", ims)) if value is not None}
    assert freshness.not_modified(headers, etag, last_modified) in (True, False)
    if inm is not None:
        assert freshness.etag_matches(inm, etag) in (True, False)


@FAST
@given(
    stored_at=st.floats(allow_nan=True),
    lifetime=st.floats(allow_nan=True),
    now=st.floats(allow_nan=True),
)
def test_is_fresh_never_raises(stored_at: float, lifetime: float, now: float) -> None:
    assert freshness.is_fresh(stored_at, lifetime, now) in (True, False)


# --- sparse_index and rust_manifest on arbitrary bytes ----------------------------------------------------

_json_lines = st.lists(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(st.sampled_from(["name", "vers", "cksum", "dl", "x"]), inner, max_size=4)
        ),
        max_leaves=8,
    ),
    max_size=5,
)


def _jsonish(values: list[object]) -> bytes:
    import json

    return b"\n".join(json.dumps(v).encode() for v in values)


_bodies = st.binary(max_size=300) | _json_lines.map(_jsonish) | st.text(max_size=200).map(str.encode)


@FAST
@given(body=_bodies, version=st.text(max_size=10))
@example(body=b'{"vers": "1.0.0", "cksum": 5}\n[1]\n"x"\n' + b"9" * 5000, version="1.0.0")
@example(body=b"[" * 100_000, version="1.0.0")
def test_sparse_index_readers_never_raise(body: bytes, version: str) -> None:
    cksum = sparse_index.published_cksum(body, version)
    assert cksum is None or re.fullmatch(r"[0-9a-f]{64}", cksum)
    dl = sparse_index.config_dl(body)
    assert dl is None or isinstance(dl, str)
    assert sparse_index.index_file_problem(body) is None or isinstance(sparse_index.index_file_problem(body), str)
    assert (sparse_index.config_problem(body) is None) == (dl is not None)


_toml_bodies = _bodies | st.sampled_from(
    [
        b"[pkg]\n",
        b"pkg = 1\n",
        b'[pkg.rust]\ntarget = "x"\n',
        b'[pkg.rust.target.x]\nurl = 1\nhash = "' + b"a" * 64 + b'"\n',
        b'[pkg.rust.target.x]\nurl = "https://h/dist/a.tar.gz"\nhash = "' + b"a" * 64 + b'"\n',
        b'[pkg.rust.target.x]\nxz_url = "http://[oops/a.tar.xz"\nxz_hash = "' + b"a" * 64 + b'"\n',
        b"a = " + b"[" * 5000,
        b"\xff\xfe",
    ]
)


@FAST
@given(body=_toml_bodies)
def test_rust_manifest_readers_raise_only_value_error(body: bytes) -> None:
    digest = rust_manifest.parse_sha256_file(body)
    assert digest is None or re.fullmatch(r"[0-9a-f]{64}", digest)
    try:
        hashes = rust_manifest.archive_hashes(body)
    except ValueError:
        return
    for path, value in hashes.items():
        assert isinstance(path, str)
        assert re.fullmatch(r"[0-9a-f]{64}", value)
