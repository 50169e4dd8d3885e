"""What every benchmark script does at the end: print its figures and write them as JSON."""

from __future__ import annotations

import json
from pathlib import Path

# Appended to a child script: its own peak RSS (getrusage would include what the forking parent held).
CHILD_PEAK_RSS = 'next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024'


def report(result: dict, out: str | Path) -> None:
    width = max(map(len, result)) + 2
    for k, v in result.items():
        print(f"{k:{width}s} {v:.3f}" if isinstance(v, float) else f"{k:{width}s} {v}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
