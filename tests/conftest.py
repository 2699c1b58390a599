from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import ProxyProcess
from tests.origins.tls import OriginTLS, make_origin_tls


@pytest.fixture(scope="session")
def origin_tls(tmp_path_factory: pytest.TempPathFactory) -> OriginTLS:
    return make_origin_tls(tmp_path_factory.mktemp("origin-tls"))


class ProxyFactory:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[ProxyProcess] = []

    def __call__(self, args: list[str], name: str = "proxy", cache_dir: Path | None = None) -> ProxyProcess:
        proxy = ProxyProcess(self.root / name, args, cache_dir=cache_dir)
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
