"""Which program a request belongs to, when the client does not say: the conversation tells.

An agent loop sends its history every time. Request k+1 of a program carries request k's
messages, then request k's answer, then something new (a tool result, a user turn):

    request k      [sys, u1, a1, t1]                      -> answer a2
    request k+1    [sys, u1, a1, t1, a2, t2]               extends  chain(sys..t1, a2)
                    └──────── hashed prefix ────────┘

so every answered request leaves one key, the chained content hash of its messages plus its
answer, and a new request belongs to the program of the longest of its own message prefixes that
is such a key. It also leaves the hash of its messages alone: a client that drops a cut-off answer
and adds a message (mini-swe-agent does) strictly extends them, and joins too; an identical
request (a rerun of the same task) does not. A multi-agent program (each agent with its own system prompt and history) is
linked the other way too: a request that quotes an earlier answer whole, as one message (the
usual way a graph hands one node's output to the next), joins that answer's program.

Messages are hashed in a canonical form (role, text, tool calls with their arguments as parsed
JSON), so a client that echoes an answer back re-serialised (LangChain does) still matches. Keys
carry the tenant: one tenant's traffic never joins another's program.

Everything here is bounded (`TrackerLimits`): keys and programs are LRU maps; a program idle for
`idle_s` expires (the caller closes it), and when `max_programs` are open the least recently used
one expires first.
"""

from __future__ import annotations

import hashlib
import itertools
from hashlib import blake2b
import json
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

MIN_QUOTE_CHARS = 24  # shorter answers ("ok", "yes") are too common to link programs by


def message_text(content) -> str:
    """The text of a message's content: a string, a list of text parts, or nothing."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


def _args(arguments) -> str:
    if isinstance(arguments, str):
        try:
            return json.dumps(json.loads(arguments), sort_keys=True, separators=(",", ":"))
        except ValueError:
            return arguments
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"))


def canonical(m: Mapping) -> bytes:
    """role, text, tool_call_id and tool calls (id, name, arguments), each field length-prefixed so
    that no two different messages have the same form."""
    role = m.get("role") or ""
    c = m.get("content")
    text = c if isinstance(c, str) else message_text(c)
    tcid = m.get("tool_call_id") or ""
    form = f"{len(role)}:{role}{len(text)}:{text}{len(tcid)}:{tcid}"
    calls = m.get("tool_calls")
    if calls:
        fields = []
        for c in calls:
            fn = c.get("function") or {}
            fields += [c.get("id") or "", fn.get("name") or "", _args(fn.get("arguments", ""))]
        form += "".join(f"{len(f)}:{f}" for f in fields)
    return form.encode()


def chain(seed: str, messages: Sequence[Mapping], links: LinkCache | None = None) -> list[bytes]:
    """chain[i]: the content hash of messages[:i+1] (each link hashes the one before). `links`: a
    cache of links already computed (an agent resends its whole history every request)."""
    h = blake2b(seed.encode(), digest_size=16).digest()
    out = []
    if links is None:
        for m in messages:
            h = blake2b(h + canonical(m), digest_size=16).digest()
            out.append(h)
        return out
    for m in messages:
        h = links.link(h, m)
        out.append(h)
    return out


class LinkCache:
    """Links of the hash chain already computed, so a request that resends its conversation hashes
    only what is new: (previous link, role, the text's length and Python hash) -> link, for plain
    messages (a role and a string content; others are hashed each time). Python's string hash is
    keyed per process (SipHash), so a client cannot aim two texts at one entry; what a collision
    would cost is one wrong program guess, never another tenant's (the seed link carries the
    tenant). Bounded: past `max_entries` the older half goes."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self._links: dict[tuple, bytes] = {}
        self.hits = 0

    def link(self, prev: bytes, m: Mapping) -> bytes:
        c = m.get("content")
        if type(c) is not str or len(m) != 2:
            return blake2b(prev + canonical(m), digest_size=16).digest()
        key = (prev, m.get("role"), len(c), hash(c))
        h = self._links.get(key)
        if h is not None:
            self.hits += 1
            return h
        h = self._links[key] = blake2b(prev + canonical(m), digest_size=16).digest()
        if len(self._links) > self.max_entries:
            for k in list(itertools.islice(self._links, self.max_entries // 2)):
                del self._links[k]
        return h


def text_key(tenant: str, text: str) -> bytes:
    return hashlib.blake2b(tenant.encode() + b"\0" + text.strip().encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackerLimits:
    idle_s: float = 600.0  # a program with no request for this long is over
    max_programs: int = 10_000
    max_keys: int = 200_000  # continuation, answer and request keys, together


@dataclass(slots=True, kw_only=True)
class TrackedProgram:
    program_id: str
    tenant: str
    inferred: bool  # no program id came with its requests
    last_seen_s: float
    calls: int = 0
    agents: dict[str, str] = field(default_factory=dict)  # system-prompt digest -> agent key
    last_agent: str | None = None
    tool_calls_at_s: float | None = None  # its last answer asked for tools (the gap starts here)
    tool_names: tuple[str, ...] = ()
    workflow: str = ""  # the learner's class, or a declared workflow's name
    declared: bool = False
    in_flight: int = 0


class ProgramTracker:
    def __init__(self, limits: TrackerLimits = TrackerLimits()):
        self.limits = limits
        self.programs: OrderedDict[str, TrackedProgram] = OrderedDict()  # least recently used first
        self._keys: OrderedDict[bytes, str] = OrderedDict()  # continuation / answer key -> program
        self._requests: OrderedDict[bytes, str] = OrderedDict()  # an answered request's messages -> program
        self.inferred_joins = 0  # requests matched to an earlier program by content
        self.quote_joins = 0  # of those, by quoting an earlier answer

    def find(self, tenant: str, messages: Sequence[Mapping], links: list[bytes] | None = None) -> str | None:
        """The program an undeclared request continues, or None: the longest prefix of its messages
        that an earlier request plus its answer left, else an earlier answer it quotes whole.
        `links`: chain(tenant, messages), when the caller has it."""
        links = links if links is not None else chain(tenant, messages)
        for i in range(len(links) - 1, -1, -1):
            pid = self._keys.get(links[i])
            if pid is None and 1 <= i < len(links) - 1:  # strictly extends an earlier request
                pid = self._requests.get(links[i])
            if pid is not None and pid in self.programs:
                self.inferred_joins += 1
                return pid
        for m in reversed(messages):
            if m.get("role") in ("user", "tool", "system", "developer"):
                text = message_text(m.get("content"))
                if len(text) >= MIN_QUOTE_CHARS:
                    pid = self._keys.get(text_key(tenant, text))
                    if pid is not None and pid in self.programs:
                        self.inferred_joins += 1
                        self.quote_joins += 1
                        return pid
        return None

    def open(self, program_id: str | None, *, tenant: str, now_s: float) -> tuple[TrackedProgram, bool]:
        """The program (created when new); True when it was created here."""
        pid = program_id or f"auto-{uuid.uuid4().hex[:16]}"
        prog = self.programs.get(pid)
        if prog is not None:
            self.programs.move_to_end(pid)
            prog.last_seen_s = now_s
            return prog, False
        prog = TrackedProgram(program_id=pid, tenant=tenant, inferred=program_id is None, last_seen_s=now_s)
        self.programs[pid] = prog
        return prog, True

    def answered(self, prog: TrackedProgram, messages: Sequence[Mapping], answer: Mapping,
                 links: list[bytes] | None = None) -> None:
        """Leave the keys a continuation of this request will carry (`links`: chain(tenant, messages))."""
        links = links if links is not None else chain(prog.tenant, messages)
        last = links[-1] if links else hashlib.blake2b(prog.tenant.encode(), digest_size=16).digest()
        self._put(self._keys, hashlib.blake2b(last + canonical(answer), digest_size=16).digest(), prog.program_id)
        if len(messages) >= 2:
            # a client that drops an answer (cut off at max_tokens, say) and adds a message still
            # extends this request's messages; an identical request (a rerun) does not join
            self._put(self._requests, links[-1], prog.program_id)
        text = message_text(answer.get("content"))
        if len(text) >= MIN_QUOTE_CHARS:
            self._put(self._keys, text_key(prog.tenant, text), prog.program_id)

    def _put(self, table: OrderedDict, key: bytes, pid: str) -> None:
        table[key] = pid
        table.move_to_end(key)
        while len(table) > self.limits.max_keys // 2:
            table.popitem(last=False)

    def expired(self, now_s: float) -> list[TrackedProgram]:
        """Remove and return the programs that are over: idle too long, or over the bound (oldest first).
        A program with a request in flight is never idle."""
        out = []
        for pid, prog in list(self.programs.items()):
            over = len(self.programs) > self.limits.max_programs
            if prog.in_flight:
                continue
            if over or now_s - prog.last_seen_s > self.limits.idle_s:
                del self.programs[pid]
                out.append(prog)
            else:
                break  # least recently used first: the rest were seen later
        return out

    def remove(self, pid: str) -> TrackedProgram | None:
        return self.programs.pop(pid, None)


__all__ = ["LinkCache", "MIN_QUOTE_CHARS", "ProgramTracker", "TrackedProgram", "TrackerLimits", "canonical", "chain",
           "message_text", "text_key"]
