"""SWE-bench-java evaluation logs (``test-run-logs/<instance>.log``): real test-run durations.

The harness logs, with millisecond stamps, when it wrote the eval script into the container
(``Eval script for ... written``) and when it read the result back (``Git diff after:``); the time
between is the test run. These logs come with no licence: use them for development statistics
and tests only, never for shipped files.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

from agentflow.runtime.workload.convert.common import expand_inputs

_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}) - INFO - (.*)$")


def eval_run_seconds(path: Path) -> float | None:
    """The test run's duration in one log, or None when the log has no complete run."""
    start = end = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if m.group(2).startswith("Eval script for"):
            start = t
        elif m.group(2).startswith("Git diff after") and start is not None:
            end = t
            break
    return round(end - start, 3) if start is not None and end is not None else None


def eval_run_durations(inputs: list[Path]) -> tuple[list[float], int]:
    """(durations of every complete test run, number of logs without one)."""
    out, missing = [], 0
    for path in expand_inputs(inputs, ("*.log",)):
        seconds = eval_run_seconds(path)
        if seconds is None:
            missing += 1
        else:
            out.append(seconds)
    return out, missing
