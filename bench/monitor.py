"""CPU time from /proc: of one process, and of everything outside a benchmark's process tree.

A benchmark must have the machine to itself; `cpu_monitor` says how far that held.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from plantdx.serving.procs import proc_stat


def _clock_ticks(fields: list[str]) -> int:
    """User + system CPU ticks (utime and stime, fields 14 and 15 of proc(5))."""
    return int(fields[11]) + int(fields[12])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far; None when it is gone."""
    fields = proc_stat(pid)
    if fields is None:
        return None
    return _clock_ticks(fields) / os.sysconf("SC_CLK_TCK")


def proc_table() -> dict[int, tuple[int, float, str]]:
    """pid → (parent pid, CPU seconds so far, command) for every process."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        fields = proc_stat(d.name)
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields is None:
            continue
        out[int(d.name)] = (int(fields[1]), _clock_ticks(fields) / tick, cmd)
    return out


def in_tree(pid: int, table: dict[int, tuple[int, float, str]], roots: tuple[int, ...]) -> bool:
    """Whether `pid` descends from one of `roots` (or is one)."""
    for _ in range(64):
        if pid in roots:
            return True
        if pid not in table or pid <= 1:
            return False
        pid = table[pid][0]
    return False


def cpu_monitor(tree: int, out: str | Path, interval: float = 1.0) -> dict[str, Any]:
    """Until SIGTERM: CPU seconds used by processes outside the process tree of `tree` (and of
    this process); the report goes to `out` as JSON and is returned."""
    stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    me = os.getpid()
    seen: dict[int, float] = {}
    foreign: dict[str, float] = {}
    start = time.monotonic()
    first = True
    while True:
        table = proc_table()
        for pid, (_, cpu, cmd) in table.items():
            # Processes already running at the first sample count from there; later ones
            # started inside the window and count in full.
            delta = cpu - seen.get(pid, cpu if first else 0.0)
            seen[pid] = cpu
            if delta > 0 and not in_tree(pid, table, (tree, me)):
                key = cmd[:100] or f"[pid {pid}]"
                foreign[key] = foreign.get(key, 0.0) + delta
        first = False
        if stop:
            break
        time.sleep(interval)
    wall = time.monotonic() - start
    total = sum(foreign.values())
    report = {
        "wall_s": round(wall, 1),
        "foreign_cpu_s": round(total, 1),
        "foreign_pct_of_machine": round(100 * total / (wall * (os.cpu_count() or 1)), 1),
        "top": [[k, round(v, 1)] for k, v in sorted(foreign.items(), key=lambda kv: -kv[1])[:5]],
    }
    Path(out).write_text(json.dumps(report, indent=2) + "\n")
    return report
