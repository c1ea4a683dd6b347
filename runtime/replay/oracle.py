"""The future of a replayed workload: what only Belady's bound may read.

Belady's MIN evicts what is needed furthest in the future. In a replay the future order of reads
depends on the simulated schedule itself, so the oracle keeps each program's future exactly as far
as the workload fixes it, and the replay refreshes it at every step of the program:

    the next call:  its submission time when it is submitted (it is needed now), or, while the
                    program runs a tool, the tool's end (the recorded duration the replay itself
                    uses: exact);
    later calls:    each after the previous call's LLM time (the recorded latency where the
                    workload has one, else the cost model's time for the call alone) plus its tool.

A call reads every prefix on its prompt's path, not only its own boundaries: the oracle learns,
once per program, which of the program's prefix keys each call's prompt starts with (`learn`), so
an old history prefix stays alive as long as a later call reads through it. A prefix's next use is
the earliest projected call, over all live programs, that reads it; inf when none will.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Hashable, Sequence


class ReplayOracle:
    def __init__(self, *, llm_time_s_per_call: float = 1.0):
        self.llm_time_s = llm_time_s_per_call  # only for `project`, which takes no LLM times
        # prefix key -> {program: projected time of its next call reading that prefix}
        self._next: dict[str, dict[Hashable, float]] = {}
        self._keys_of: dict[Hashable, set[str]] = {}
        # learnt programs: key -> the indices of the calls whose prompts read it (ascending);
        # per call, its LLM time and the tool time after it
        self._readers: dict[Hashable, dict[str, list[int]]] = {}
        self._times: dict[Hashable, tuple[list[float], list[float]]] = {}

    # ---- learnt programs: exact paths, refreshed next uses ----------------------------------
    def learn(self, program_id: Hashable, paths: Sequence[Sequence[str]], llm_s: Sequence[float],
              tool_s: Sequence[float]) -> None:
        """Program `program_id`'s calls, in order: the prefix keys each call's prompt reads (its
        whole path), its LLM time, and the tool time after it."""
        if not len(paths) == len(llm_s) == len(tool_s):
            raise ValueError("paths, llm_s and tool_s need one entry per call")
        readers: dict[str, list[int]] = {}
        for i, keys in enumerate(paths):
            for k in keys:
                calls = readers.setdefault(k, [])
                if not calls or calls[-1] != i:
                    calls.append(i)
        self._readers[program_id] = readers
        self._times[program_id] = (list(llm_s), list(tool_s))

    def learnt(self, program_id: Hashable) -> bool:
        return program_id in self._readers

    def refresh(self, program_id: Hashable, next_call: int, next_at_s: float) -> None:
        """Call `next_call` of a learnt program is read at `next_at_s`; the calls after it follow
        at their projected times. Replaces what was known of the program."""
        self.forget(program_id, keep_learnt=True)
        llm, tool = self._times[program_id]
        starts = [0.0] * len(llm)  # projected start of every call from next_call on
        t = next_at_s
        for j in range(next_call, len(llm)):
            starts[j] = t
            t += llm[j] + tool[j]
        keys = set()
        for k, calls in self._readers[program_id].items():
            i = bisect_left(calls, next_call)
            if i < len(calls):
                keys.add(k)
                self._next.setdefault(k, {})[program_id] = starts[calls[i]]
        self._keys_of[program_id] = keys

    # ---- explicit futures ------------------------------------------------------------------
    def project(self, program_id: Hashable, now_s: float, future: list[tuple[float, list[str]]]) -> None:
        """Program `program_id`'s future calls: (delay before the call, the prefix keys it reads),
        in order, each call taking `llm_time_s_per_call`. Replaces what was known of this program."""
        self.forget(program_id, keep_learnt=True)
        t = now_s
        keys_seen: set[str] = set()
        for delay, keys in future:
            t += delay
            for k in keys:
                if k not in keys_seen:  # the earliest call reading a key is its next use
                    keys_seen.add(k)
                    self._next.setdefault(k, {})[program_id] = t
            t += self.llm_time_s
        self._keys_of[program_id] = keys_seen

    def forget(self, program_id: Hashable, *, keep_learnt: bool = False) -> None:
        for k in self._keys_of.pop(program_id, ()):
            users = self._next.get(k)
            if users is not None:
                users.pop(program_id, None)
                if not users:
                    del self._next[k]
        if not keep_learnt:
            self._readers.pop(program_id, None)
            self._times.pop(program_id, None)

    def next_use_at_s(self, prefix_key: str) -> float:
        users = self._next.get(prefix_key)
        if not users:
            return math.inf
        return min(users.values())


def program_paths(calls: Sequence[tuple[bytes, bytes, Sequence[tuple[str, int]], str]],
                  token_bytes: int) -> list[list[str]]:
    """Per call of one program: every prefix key of the program whose part its prompt reads.

    `calls`: per call, (packed prompt, packed output, [(boundary key, tokens)], key of prompt +
    output), as the replay prepares them. An engine gives a key's priority to the cache nodes past
    its parent prefix (the previous boundary, as the replay first saw it), so a key counts as read
    by call c when c's prompt reaches into that part: it begins with the key's tokens up to its
    parent's end and one more. That covers the call's own boundaries, the system prompt, every
    earlier call's history or whole sequence that the prompt carries on, and the prompt part of a
    whole-sequence key whose output the next prompt drops (a reasoning call's)."""
    keys: dict[str, tuple[bytes, int]] = {}  # key -> (a sequence starting with its part, tokens read)
    for prompt, output, prefixes, full_key in calls:
        parent = 0
        for key, n in prefixes:
            if key not in keys:
                keys[key] = (prompt, min(n, parent + 1))
            parent = n
        if full_key not in keys:
            reach = min(len(prompt) // token_bytes + len(output) // token_bytes, parent + 1)
            keys[full_key] = (prompt if reach * token_bytes <= len(prompt) else prompt + output, reach)
    paths = []
    for prompt, _, _, _ in calls:
        size = len(prompt)
        path = []
        for key, (src, n) in keys.items():
            nbytes = n * token_bytes
            if nbytes <= size and (src is prompt or prompt.startswith(memoryview(src)[:nbytes])):
                path.append(key)
        paths.append(path)
    return paths
