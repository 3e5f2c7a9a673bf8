"""Processes and ports on Linux: free ports, /proc readers (state, parent, children, the
Python backend's shared memory), and a child that dies with its parent."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
from collections.abc import Sequence
from pathlib import Path

PR_SET_PDEATHSIG = 1


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...: field 3 of
    proc(5) is index 0), or None when the process is gone. The name may hold spaces and
    parentheses, so the split is after the last ')'."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split() or None


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").glob("[0-9]*"):
        fields = proc_stat(entry.name)
        if fields is not None and len(fields) > 1 and fields[1] == str(pid):
            out.append(int(entry.name))
    return out


def process_state(pid: int) -> str | None:
    """The state letter of a process (R, S, Z...), or None when it is gone."""
    fields = proc_stat(pid)
    return fields[0] if fields else None


SHM_PREFIX = "/dev/shm/triton_python_backend_shm_region_"


def shm_regions(pids: Sequence[int]) -> set[Path]:
    """The Python backend's shared-memory regions these processes have mapped."""
    out = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        for line in maps.splitlines():
            at = line.find(SHM_PREFIX)
            if at >= 0 and not line.endswith("(deleted)"):
                out.add(Path(line[at:].strip()))
    return out


def die_with_parent() -> None:
    # The server must not outlive the process that started it (Ctrl-C, kill, crash).
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass
    os.setpgrp()
