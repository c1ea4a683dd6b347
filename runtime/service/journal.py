"""What the scheduler service writes down so that a restart loses no open program.

The scheduler's state is a function of the events it applied, so the journal is the event log of
the programs still open (SQLite, WAL mode: a commit is an append to the log file, no fsync per
event under `synchronous=NORMAL`, and readers never block the writer):

    workflows(hash, spec)                     compiled again on recovery
    programs(program_id, workflow_hash, tenant, opened_s, last_seq, share_kv)
                                              (tenant and share_kv: the program's cross-agent
                                              reuse namespace, reuse_plan.namespace_for)
    events(id, program_id, t_s, kind, body)   CallSubmitted (with its input spans), CallStarted,
                                              CallFinished, ToolStarted, ToolFinished of open
                                              programs, in order
    tool_samples(id, tool, duration_s)        what the TTL policy learned from closed programs
                                              (the newest N per tool)

The file holds tenants' program ids, call ids, step and tool names, prefix keys (hashes of
token ids and namespaces) and token counts; never prompts, outputs or credentials. It is created
with mode 0600 (SQLite gives its -wal and -shm files the same mode), and an existing file is set
to 0600 when opened.

Closing a program deletes its rows, so the journal holds only what a restart needs; worker
state is not journaled (workers register again when the scheduler comes back). Recovery replays
each program's events into a fresh scheduler at their recorded times (`ServiceCore.recover`).
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS workflows (hash TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS programs (
    program_id TEXT PRIMARY KEY, workflow_hash TEXT NOT NULL, tenant TEXT NOT NULL,
    opened_s REAL NOT NULL, last_seq INTEGER NOT NULL DEFAULT 0, share_kv INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, program_id TEXT NOT NULL, t_s REAL NOT NULL,
    kind TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_program ON events(program_id);
CREATE TABLE IF NOT EXISTS tool_samples (id INTEGER PRIMARY KEY AUTOINCREMENT, tool TEXT NOT NULL,
    duration_s REAL NOT NULL);
"""

_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode  # one encoder, not one a row
TOOL_SAMPLES_KEPT = 512  # per tool; older samples are dropped (the TTL policy keeps fewer)


@dataclass(frozen=True, slots=True)
class JournaledProgram:
    program_id: str
    workflow_hash: str
    tenant: str
    opened_s: float
    last_seq: int
    share_kv_across_programs: bool = False


@dataclass(frozen=True, slots=True)
class JournaledEvent:
    program_id: str
    t_s: float
    kind: str
    body: dict


class JournalError(Exception):
    """A journal file that cannot be used; the message is one line naming the file and the way out."""


class Journal:
    """An event journal in one SQLite file (":memory:" for none that survives)."""

    def __init__(self, path: str | Path = ":memory:"):
        self.path = str(path)
        way_out = f"move it aside (mv {self.path} {self.path}.bad) to start empty, or pass --journal OTHER_PATH"
        if self.path != ":memory:":
            parent = Path(self.path).resolve().parent
            if not parent.is_dir():
                raise JournalError(f"journal {self.path}: directory {parent} does not exist; create it or pass "
                                   "--journal PATH")
            try:
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
                os.chmod(self.path, 0o600)
            except OSError as exc:
                raise JournalError(f"journal {self.path}: cannot open it ({exc.strerror}); fix its permissions or "
                                   "pass --journal OTHER_PATH") from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            if "share_kv" not in {r[1] for r in self._db.execute("PRAGMA table_info(programs)")}:
                # a journal written before cross-agent reuse: its programs shared nothing
                self._db.execute("ALTER TABLE programs ADD COLUMN share_kv INTEGER NOT NULL DEFAULT 0")
            self._db.execute("PRAGMA quick_check(1)").fetchone()
        except sqlite3.DatabaseError as exc:
            raise JournalError(f"journal {self.path} is not a readable agentflow journal ({exc}); {way_out}") from None
        self.way_out = way_out
        self._pending = 0
        self._batch_depth = 0
        # Inside a batch, events and sequence numbers wait here and go in with one executemany
        # each when the batch commits (or before anything else touches those tables).
        self._rows: list[tuple[str, float, str, str]] = []
        self._seqs: dict[str, int] = {}

    @contextmanager
    def batch(self):
        """One transaction for every write inside (a batch of submissions: one commit, not N)."""
        if self._batch_depth == 0:
            if self._db.in_transaction:  # left open by a failed statement: start clean
                self._db.execute("ROLLBACK")
            self._db.execute("BEGIN")
        self._batch_depth += 1
        try:
            yield self
        except BaseException:
            self._batch_depth -= 1
            if self._batch_depth == 0:
                self._rows.clear()
                self._seqs.clear()
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            raise
        self._batch_depth -= 1
        if self._batch_depth == 0:
            try:
                self._flush()
                self._db.execute("COMMIT")
            except sqlite3.Error:  # disk full, I/O: nothing of the batch stays
                self._rows.clear()
                self._seqs.clear()
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _flush(self) -> None:
        if self._rows:
            self._db.executemany("INSERT INTO events(program_id, t_s, kind, body) VALUES (?, ?, ?, ?)", self._rows)
            self._rows.clear()
        if self._seqs:
            self._db.executemany("UPDATE programs SET last_seq = ? WHERE program_id = ?",
                                 [(seq, pid) for pid, seq in self._seqs.items()])
            self._seqs.clear()

    def close(self) -> None:
        self._db.close()

    # ---- writes (each one a transaction of its own: what returned is durable to a process crash)
    def put_workflow(self, workflow_hash: str, spec: str) -> None:
        self._db.execute("INSERT OR IGNORE INTO workflows(hash, spec) VALUES (?, ?)", (workflow_hash, spec))

    def open_program(self, program_id: str, workflow_hash: str, tenant: str, opened_s: float,
                     share_kv_across_programs: bool = False) -> None:
        self._db.execute("INSERT INTO programs(program_id, workflow_hash, tenant, opened_s, share_kv) "
                         "VALUES (?, ?, ?, ?, ?)", (program_id, workflow_hash, tenant, opened_s,
                                                    int(share_kv_across_programs)))

    def append(self, program_id: str, t_s: float, kind: str, body: dict, seq: int | None = None) -> None:
        if self._batch_depth == 0:  # on its own: a transaction of its own
            with self.batch():
                self.append(program_id, t_s, kind, body, seq)
            return
        self._rows.append((program_id, t_s, kind, _encode(body)))  # inside a batch: rows wait for its commit
        if seq is not None:
            self._seqs[program_id] = seq  # the program's last one wins, as the UPDATEs in order would

    def close_program(self, program_id: str) -> None:
        """Forget a closed program; its tool durations move to `tool_samples`. (An open program's
        durations live in its events only, so recovery, which replays those events, counts each
        sample once.)"""
        with self.batch():
            self._flush()
            cur = self._db.execute(
                "INSERT INTO tool_samples(tool, duration_s) SELECT COALESCE(json_extract(body, '$.stats_tool'), "
                "json_extract(body, '$.tool')), "
                "json_extract(body, '$.duration_s') FROM events WHERE program_id = ? AND kind = 'tool_finished' "
                "ORDER BY id", (program_id,))
            self._trim_samples(cur.rowcount)
            self._db.execute("DELETE FROM events WHERE program_id = ?", (program_id,))
            self._db.execute("DELETE FROM programs WHERE program_id = ?", (program_id,))

    def _trim_samples(self, added: int) -> None:
        self._pending += max(0, added)
        if self._pending >= TOOL_SAMPLES_KEPT:  # trim now and then, not per sample
            self._pending = 0
            self._db.execute(
                "DELETE FROM tool_samples WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
                "(PARTITION BY tool ORDER BY id DESC) AS r FROM tool_samples) WHERE r > ?)", (TOOL_SAMPLES_KEPT,))

    # ---- reads (recovery)
    def workflows(self) -> dict[str, str]:
        return dict(self._db.execute("SELECT hash, spec FROM workflows"))

    def programs(self) -> list[JournaledProgram]:
        self._flush()
        rows = self._db.execute("SELECT program_id, workflow_hash, tenant, opened_s, last_seq, share_kv "
                                "FROM programs ORDER BY opened_s, rowid")
        return [JournaledProgram(*r[:5], share_kv_across_programs=bool(r[5])) for r in rows]

    def events(self) -> Iterator[JournaledEvent]:
        self._flush()
        for pid, t, kind, body in self._db.execute("SELECT program_id, t_s, kind, body FROM events ORDER BY id"):
            yield JournaledEvent(pid, t, kind, json.loads(body))

    def tool_samples(self) -> list[tuple[str, float]]:
        return list(self._db.execute("SELECT tool, duration_s FROM tool_samples ORDER BY id"))

    def counts(self) -> dict[str, int]:
        self._flush()
        return {t: self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # noqa: S608 (fixed names)
                for t in ("workflows", "programs", "events", "tool_samples")}


__all__ = ["JournaledEvent", "JournaledProgram", "Journal", "JournalError"]
