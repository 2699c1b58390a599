from __future__ import annotations

import gc
import inspect
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ProxyProcess
from tests.origins.crates_io import FakeCratesIo
from tests.origins.registry import Registry, build_registry, edge_case_spec, registry_cache_dir
from tests.origins.tls import OriginTLS, make_origin_tls


@pytest.fixture(scope="session")
def origin_tls(tmp_path_factory: pytest.TempPathFactory) -> OriginTLS:
    return make_origin_tls(tmp_path_factory.mktemp("origin-tls"))


@pytest.fixture(scope="session")
def edge_registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Registry:
    """A small registry of real .crate files exercising cargo's corner cases (see tests/origins/registry.py)."""
    return build_registry(edge_case_spec(), registry_cache_dir(request.config, tmp_path_factory))


@pytest.fixture
def crates_origin(edge_registry: Registry, origin_tls: OriginTLS) -> Iterator[FakeCratesIo]:
    """A fake crates.io whose config.json names the real `static.crates.io` (as crates.io's does)."""
    origin = FakeCratesIo(edge_registry, origin_tls)
    yield origin
    origin.close()


class ProxyFactory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[ProxyProcess] = []

    def __call__(
        self, args: list[str], name: str = "proxy", cache_dir: Path | None = None, wrap: list[str] | None = None
    ) -> ProxyProcess:
        proxy = ProxyProcess(self.root / name, args, cache_dir=cache_dir, wrap=wrap)
        self.started.append(proxy)
        return proxy.start()


@pytest.fixture
def start_proxy(tmp_path: Path) -> Iterator[ProxyFactory]:
    """Start `ruststash serve` processes; at teardown each must stop cleanly and have logged no traceback."""
    factory = ProxyFactory(tmp_path)
    yield factory
    problems = []
    for proxy in factory.started:
        code = proxy.stop()
        log = proxy.log()
        if code not in (0, -15) or "Traceback" in log:
            problems.append(f"{proxy.workdir.name}: exit code {code}\n{log[-4000:]}")
    assert not problems, "\n".join(problems)


@pytest.fixture(autouse=True)
def collect_garbage_after_socket_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that ran sockets in this process (an origin, an event loop), collect garbage: a transport it
    left open then fails that test with a ResourceWarning (warnings are errors), not whichever test the
    collector happens to run in minutes later (CI failed a pure-logic test that way, twice)."""
    yield
    if (
        request.node.get_closest_marker("e2e") is not None
        or "origin_tls" in request.fixturenames
        or inspect.iscoroutinefunction(getattr(request, "function", None))
    ):
        gc.collect()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (RUSTSTASH_REQUIRE_E2E=1) a run whose end-to-end tests were skipped, or that ran none, fails."""
    import os

    if os.environ.get("RUSTSTASH_REQUIRE_E2E") != "1" or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    e2e_ran = 0
    e2e_skipped = []
    for outcome in ("passed", "skipped"):
        for report in reporter.stats.get(outcome, []):
            if "e2e" not in getattr(report, "keywords", {}):
                continue
            if outcome == "skipped":
                e2e_skipped.append(report.nodeid)
            elif report.when == "call":
                e2e_ran += 1
    if e2e_skipped or e2e_ran == 0:
        reporter.write_line(f"RUSTSTASH_REQUIRE_E2E: {e2e_ran} e2e tests passed, skipped: {e2e_skipped}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
