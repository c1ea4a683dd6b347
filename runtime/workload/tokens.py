"""Deterministic synthetic token ids with the sharing structure of the recorded run.

A replay needs token ids, not text: a radix cache only compares ids. Every token comes from an
*origin*, an endless seeded stream of ids:

    ("part", key)                      a shared prompt part: same key -> same ids in every program
    ("new", program, instance, i, k)   segment k of call i: fresh text nobody else has
    ("out", program, instance, i)      the tokens call i generates

A prompt is a list of *runs* ``(origin, start, num_tokens)``: a slice of one stream. Segments map
to runs like this (call i of a program):

    system(n)        the agent's parts, in order, cut after n tokens
    history(j, n)    the first n tokens of runs(prompt j) + run(output j)
    output_of(j, n)  (("out", ..., j), 0, n)
    new(n)           (("new", ..., i, k), 0, n)

Runs are kept canonical (adjacent slices of the same stream merge), so two prompts have the same
ids exactly when they have the same runs; ``stats.perfect_prefix_reuse`` relies on that and never
materialises ids. ``instance`` lets a replay run the same program twice without the two copies
sharing anything but their prompt parts; ``seed`` changes every id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from agentflow.errors import WorkloadError
from agentflow.runtime.workload.format import Program, SegmentKind

Origin = tuple
Run = tuple[Origin, int, int]  # (origin, start, num_tokens)

DEFAULT_VOCAB_SIZE = 32_000
# Ids below this are left to special tokens (BOS, EOS, padding) of whatever engine replays the file.
RESERVED_IDS = 16


def _append(runs: list[Run], run: Run) -> None:
    origin, start, n = run
    if n <= 0:
        return
    if runs:
        o, s, m = runs[-1]
        if o == origin and s + m == start:
            runs[-1] = (o, s, m + n)
            return
    runs.append(run)


def _take(runs: list[Run], n: int) -> list[Run]:
    """The first n tokens of a run list."""
    out: list[Run] = []
    left = n
    for origin, start, m in runs:
        if left <= 0:
            break
        _append(out, (origin, start, min(m, left)))
        left -= m
    return out


def program_runs(program: Program, *, instance: int = 0) -> list[tuple[list[Run], Run]]:
    """For each call: the runs of its prompt, and the run of its output."""
    agents = {a.name: a for a in program.agents}
    result: list[tuple[list[Run], Run]] = []
    full: list[list[Run]] = []
    for i, call in enumerate(program.calls):
        prompt: list[Run] = []
        for k, seg in enumerate(call.segments):
            if seg.kind is SegmentKind.SYSTEM:
                agent = agents.get(call.agent)
                if agent is None:
                    raise WorkloadError(f"unknown agent {call.agent!r}", record=program.id,
                                        field=f"calls[{i}].agent")
                parts = []
                for p in agent.system_prompt:
                    _append(parts, (("part", p.key), 0, p.num_tokens))
                for r in _take(parts, seg.num_tokens):
                    _append(prompt, r)
            elif seg.kind is SegmentKind.HISTORY:
                for r in _take(full[seg.call], seg.num_tokens):
                    _append(prompt, r)
            elif seg.kind is SegmentKind.OUTPUT_OF:
                _append(prompt, (("out", program.id, instance, seg.call), 0, seg.num_tokens))
            else:
                _append(prompt, (("new", program.id, instance, i, k), 0, seg.num_tokens))
        output: Run = (("out", program.id, instance, i), 0, call.output_tokens)
        result.append((prompt, output))
        seq = list(prompt)
        _append(seq, output)
        full.append(seq)
    return result


@dataclass(slots=True)
class TokenIds:
    """Materialises runs into ids; caches each origin's stream so shared parts cost one draw."""

    seed: int = 0
    vocab_size: int = DEFAULT_VOCAB_SIZE
    _streams: dict[Origin, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vocab_size <= RESERVED_IDS + 1:
            raise WorkloadError(f"vocab_size must exceed {RESERVED_IDS + 1} (got {self.vocab_size})",
                                field="vocab_size")

    def _stream(self, origin: Origin, length: int) -> np.ndarray:
        have = self._streams.get(origin)
        if have is not None and len(have) >= length:
            return have
        # The stream is a pure function of (seed, origin): growing it redraws from the same seed,
        # so a prefix never changes when a longer slice is asked for later.
        digest = hashlib.blake2b(repr((self.seed, origin)).encode(), digest_size=8).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        size = max(length, 2 * len(have) if have is not None else 0)
        ids = rng.integers(RESERVED_IDS, self.vocab_size, size=size, dtype=np.int64)
        self._streams[origin] = ids
        return ids

    def ids(self, runs: list[Run]) -> np.ndarray:
        pieces = [self._stream(o, s + n)[s:s + n] for o, s, n in runs]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def forget(self, program_id: str) -> None:
        """Drop a finished program's private streams (shared parts stay)."""
        for origin in [o for o in self._streams if o[0] != "part" and o[1] == program_id]:
            del self._streams[origin]


def token_ids(program: Program, call_index: int, *, seed: int = 0, instance: int = 0,
              vocab_size: int = DEFAULT_VOCAB_SIZE, ids: TokenIds | None = None) -> np.ndarray:
    """Prompt token ids of one call (int64). Pass a shared ``TokenIds`` to reuse streams across calls."""
    if not 0 <= call_index < len(program.calls):
        raise WorkloadError(f"call index {call_index} out of range (0..{len(program.calls) - 1})",
                            record=program.id, field="call_index")
    ids = ids or TokenIds(seed=seed, vocab_size=vocab_size)
    prompt, _ = program_runs(program, instance=instance)[call_index]
    return ids.ids(prompt)


def output_token_ids(program: Program, call_index: int, *, seed: int = 0, instance: int = 0,
                     vocab_size: int = DEFAULT_VOCAB_SIZE, ids: TokenIds | None = None) -> np.ndarray:
    """The ids call ``call_index`` generates (for engines that force the recorded output length)."""
    if not 0 <= call_index < len(program.calls):
        raise WorkloadError(f"call index {call_index} out of range (0..{len(program.calls) - 1})",
                            record=program.id, field="call_index")
    ids = ids or TokenIds(seed=seed, vocab_size=vocab_size)
    _, output = program_runs(program, instance=instance)[call_index]
    return ids.ids([output])
