"""agentflow's one error hierarchy.

    AgentflowError
    ├── WorkflowError                 a workflow cannot be built, compiled or loaded
    │   ├── WorkflowValidationError   compile() found problems; each names its step and the fix
    │   └── SpecError                 a workflow file (JSON/YAML) is malformed; names file and field
    ├── PositionError                 a program position that the compiled graph cannot hold
    └── WorkloadError                 a workload file or converter input is malformed; names file,
                                      line or record, and field

Bad input raises; "nothing to do now" returns None.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AgentflowError(Exception):
    """Base of every error agentflow raises on purpose."""


class WorkflowError(AgentflowError):
    """A workflow cannot be built, compiled or loaded."""


class ProblemCode(enum.Enum):
    DUPLICATE_NAME = "duplicate-name"
    UNKNOWN_STEP = "unknown-step"
    UNKNOWN_AGENT = "unknown-agent"
    UNKNOWN_TOOL = "unknown-tool"
    TOOL_NOT_ALLOWED = "tool-not-allowed"
    UNBOUNDED_CYCLE = "unbounded-cycle"
    BAD_LOOP = "bad-loop"
    UNREACHABLE_STEP = "unreachable-step"
    JOIN_WITHOUT_FAN_OUT = "join-without-fan-out"
    BAD_FAN_OUT = "bad-fan-out"
    NO_DEFAULT_BRANCH = "no-default-branch"
    BAD_PROBABILITY = "bad-probability"
    CONFLICTING_EDGES = "conflicting-edges"
    BAD_VALUE = "bad-value"
    EMPTY_WORKFLOW = "empty-workflow"


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing wrong with a workflow: where, what, and how to fix it."""

    code: ProblemCode
    step: str | None
    message: str
    fix: str
    fix_spec: str | None = None  # the fix in a workflow file's syntax (YAML/JSON), where it differs from `fix`

    def in_spec_syntax(self) -> "Problem":
        """This problem as a workflow file's author reads it: the fix in the file's own terms."""
        return self if self.fix_spec is None else Problem(code=self.code, step=self.step, message=self.message,
                                                          fix=self.fix_spec)

    def __str__(self) -> str:
        where = f"step '{self.step}': " if self.step is not None else ""
        return f"[{self.code.value}] {where}{self.message}. Fix: {self.fix}"


class WorkflowValidationError(WorkflowError):
    """compile() found one or more problems; all are reported at once."""

    def __init__(self, workflow: str, problems: list[Problem]):
        self.workflow = workflow
        self.problems = tuple(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(self.problems) == 1 else "problems"
        super().__init__(f"workflow '{workflow}' has {len(self.problems)} {noun}:\n{lines}")

    @property
    def codes(self) -> list[ProblemCode]:
        return [p.code for p in self.problems]


class SpecError(WorkflowError):
    """A workflow spec file is malformed: names the file and the field."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.source = source
        self.field = field
        where = ", ".join(x for x in (source, f"field {field}" if field else None) if x)
        super().__init__(f"{where}: {message}" if where else message)


class PositionError(AgentflowError):
    """A program position that the compiled step graph cannot hold (unknown step, bad loop count)."""


class WorkloadError(AgentflowError):
    """A workload file or converter input is malformed.

    The message names the file, the line or record, and the field, e.g.
    ``runs.jsonl:17: programs[3].calls[2].output_tokens: must be >= 0 (got -4)``.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        record: str | None = None,
        field: str | None = None,
    ):
        self.file = file
        self.line = line
        self.record = record
        self.field = field
        where = file or ""
        if line is not None:
            where += f":{line}"
        if record is not None:
            where += f" [{record}]"
        if field is not None:
            where += f" {field}"
        super().__init__(f"{where.strip()}: {message}" if where.strip() else message)
