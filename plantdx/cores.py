"""The CPU cores this process may use: what the serving side sizes itself by.

`os.cpu_count()` is the node's cores, not the process's: a Kubernetes pod with a CPU limit of 4
on a 64-core node sees 64 there, and a server that starts 64 worker processes (or onnxruntime
threads) on 4 cores' worth of time spends it switching between them. So the cores are the
smallest of

- the CPUs the process may run on (`os.sched_getaffinity`: a cpuset, `taskset`),
- the CPU quota of its cgroup, rounded up (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us` /
  `cpu.cfs_period_us`: what a pod's `resources.limits.cpu` becomes),

and `PLANTDX_CORES` (a whole number) replaces all of that when set: `plantdx serve --cores`,
or a deployment that wants to size the server for a share of a machine. Standard library only
(and plantdx.exceptions): this runs in the serving image and inside Triton's Python-backend stubs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from plantdx.exceptions import ConfigError

CORES_ENV = "PLANTDX_CORES"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The cgroup's CPU quota in cores (fractional), or None when there is none."""
    v2 = _read(root / "cpu.max")  # "max 100000" or "400000 100000"
    if v2:
        quota, _, period = v2.partition(" ")
        if quota != "max" and quota.isdigit() and period.isdigit() and int(period) > 0:
            return int(quota) / int(period)
        return None
    quota_v1 = _read(root / "cpu" / "cpu.cfs_quota_us")  # -1: none
    period_v1 = _read(root / "cpu" / "cpu.cfs_period_us")
    if not (quota_v1 and period_v1 and quota_v1.isdigit() and period_v1.isdigit()):
        return None  # absent, or -1: no quota
    return int(quota_v1) / int(period_v1) if int(quota_v1) > 0 and int(period_v1) > 0 else None


def parse_cores(text: str, where: str = CORES_ENV) -> int:
    """A core count as given by a person: a whole number, 1 or more."""
    try:
        cores = int(text.strip())
    except ValueError:
        raise ConfigError(f"{where} must be a whole number of cores, got {text!r}") from None
    if cores < 1:
        raise ConfigError(f"{where} must be at least 1, got {cores}")
    return cores


def usable_cores(environ: Mapping[str, str] | None = None, root: Path = CGROUP_ROOT) -> int:
    """The cores this process may use (the module's docstring says how): at least 1."""
    env = os.environ if environ is None else environ
    given = env.get(CORES_ENV, "").strip()
    if given:
        return parse_cores(given)
    cores = _affinity()
    quota = cgroup_quota(root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)
