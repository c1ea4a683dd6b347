"""The baseline: the same real SGLang server with SGLANG_PLUGINS=none behaves as stock SGLang.

A second server (`scripts/sglang_cpu_server.sh --no-plugin`: SGLANG_PLUGINS=none, LRU), started
for this module only and stopped after it. It must not load the plugin, must not know its routes,
and must ignore agentflow's kv_hints: the priority sequence that keeps A on the plugin's server
(test_server.py) evicts A here, as LRU says.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.engines.sglang._live import cached, control, priority_sequence
from tests.engines.sglang.conftest import start_server

pytestmark = [pytest.mark.needs_sglang, pytest.mark.needs_sglang_server]


@pytest.fixture(scope="module")
def stock(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("sglang-stock"), plugin=False)
    yield server
    server.stop()


def test_a_server_with_sglang_plugins_none_is_stock_sglang(stock):
    log = stock.log()
    assert "SGLANG_PLUGINS=none" in log.splitlines()[0]  # what the start script ran
    assert "impl=AgentflowRadixCache" not in log and "Tree cache initialized" in log
    assert control(stock.url, []).status_code == 404
    assert httpx.get(stock.url + "/agentflow/info", timeout=30).status_code == 404


def test_stock_sglang_ignores_the_hints_and_evicts_by_recency(stock):
    a, b = priority_sequence(stock.url, hints=True)
    assert cached(stock.url, b) == len(b) - 1
    assert cached(stock.url, a) == 0


def test_the_engine_learns_a_stock_servers_vocabulary_from_its_model_folder(stock):
    from agentflow.runtime.engines.sglang.client import SGLangEngine

    async def main():
        engine = SGLangEngine(stock.url, name="stock")
        try:
            return await engine.fetch_vocab_size()
        finally:
            await engine.aclose()

    assert asyncio.run(main()) == 49152
