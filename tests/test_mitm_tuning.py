"""The patched hook dispatch of mitmproxy's AddonManager (mitm_tuning) keeps mitmproxy's behaviour."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import pytest

with warnings.catch_warnings():  # mitmproxy's addons import pyparsing and ldap3 code that warns of deprecations
    warnings.simplefilter("ignore", DeprecationWarning)
    from mitmproxy import connection, exceptions, http, options
    from mitmproxy.http import HTTPFlow
    from mitmproxy.master import Master
    from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook

from ruststash import mitm_tuning


class Named:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name  # mitmproxy's name for the addon
        self.calls = calls


class Recorder(Named):
    def request(self, flow: HTTPFlow) -> None:
        self.calls.append(f"{self.name}:request")


class AsyncRecorder(Recorder):
    async def request(self, flow: HTTPFlow) -> None:
        self.calls.append(f"{self.name}:async request")


class Failing(Recorder):
    def request(self, flow: HTTPFlow) -> None:
        raise RuntimeError("boom")


class Halting(Named):
    def response(self, flow: HTTPFlow) -> None:
        self.calls.append(f"{self.name}:response")
        raise exceptions.AddonHalt()


class Updating(Named):
    def update(self, flows: list[Any]) -> None:
        self.calls.append(f"{self.name}:update {len(flows)}")


def a_flow() -> HTTPFlow:
    client = connection.Client(peername=("127.0.0.1", 50000), sockname=("127.0.0.1", 8080), timestamp_start=0.0)
    flow = HTTPFlow(client, connection.Server(address=("index.crates.io", 443)))
    flow.request = http.Request.make("GET", "https://index.crates.io/config.json")
    return flow


@pytest.fixture
async def master() -> Master:
    mitm_tuning.install()
    return Master(options.Options(), with_termlog=False)


async def test_hooks_run_in_chain_order_sync_and_async_and_errors_are_logged(
    master: Master, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    master.addons.add(Recorder("a", calls), Failing("b", calls), AsyncRecorder("c", calls))
    flow = a_flow()
    with caplog.at_level(logging.ERROR):
        await master.addons.handle_lifecycle(HttpRequestHook(flow))
    assert calls == ["a:request", "c:async request"]  # b failed; c still ran
    assert "Addon error: boom" in caplog.text


async def test_addon_halt_stops_the_hook_and_added_addons_are_seen(master: Master) -> None:
    calls: list[str] = []
    flow = a_flow()
    master.addons.add(Recorder("a", calls))
    await master.addons.handle_lifecycle(HttpRequestHook(flow))
    master.addons.add(Halting("h", calls), Recorder("after", calls))  # after the first dispatch
    await master.addons.handle_lifecycle(HttpRequestHook(flow))
    await master.addons.handle_lifecycle(HttpResponseHook(flow))
    assert calls == ["a:request", "a:request", "after:request", "h:response"]
    master.addons.remove(master.addons.get("a"))
    calls.clear()
    await master.addons.handle_lifecycle(HttpRequestHook(flow))
    assert calls == ["after:request"]


async def test_update_runs_only_where_an_addon_has_it(master: Master) -> None:
    calls: list[str] = []
    flow = a_flow()
    master.addons.add(Recorder("a", calls))
    assert mitm_tuning.hook_callables(master.addons, "update") == []
    master.addons.add(Updating("u", calls))
    await master.addons.handle_lifecycle(HttpRequestHook(flow))
    assert calls == ["a:request", "u:update 1"]
