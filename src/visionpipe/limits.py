"""What a container, a batch job or `ulimit` leaves this process: host memory and CPUs.

Inside a container /proc/meminfo and the CPU count are the host's; the limits are in the
process's control groups (cgroup v2, or v1's memory and cpu hierarchies) and resource limits.
No torch: preprocess sizes its workers with it.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")


def cgroup_folders(
    controller: str, root: Path = CGROUP_ROOT, membership: Path = MEMBERSHIP
) -> Iterator[tuple[Path, bool]]:
    """(folder, is_v2) of each control group whose `controller` limits bind this process: its
    own and every one above it (a parent's limit binds its children), in v2 and v1 mounts."""
    with contextlib.suppress(OSError, ValueError):
        for line in membership.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                base, v2 = root, True
            elif controller in controllers.split(","):
                # v1 mounts a hierarchy per controller set (cpu,cpuacct); a link names each.
                base, v2 = root / controller, False
            else:
                continue
            group = base / path.lstrip("/")
            for place in [group, *group.parents]:
                if not place.is_relative_to(base):
                    break
                yield place, v2


def _number(path: Path) -> int | None:
    """The file's integer; None for "max", a v1 "no limit" (a huge or negative number), or none."""
    try:
        value = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return value if 0 <= value < 2**60 else None


def memory_headroom(root: Path = CGROUP_ROOT, membership: Path = MEMBERSHIP) -> list[int]:
    """Bytes left under each memory limit binding this process; none where no limit is set.
    The group's usage counts the page cache of files it read or wrote; the part the kernel
    drops first (inactive file pages) is counted as free, as `docker stats` does."""
    found = []
    for place, v2 in cgroup_folders("memory", root, membership):
        names = (
            ("memory.max", "memory.current", "inactive_file")
            if v2
            else ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        )
        limit, used = _number(place / names[0]), _number(place / names[1])
        if limit is not None:
            found.append(limit - max(0, (used or 0) - _stat(place / "memory.stat", names[2])))
    return found


def _stat(path: Path, key: str) -> int:
    """A value of a cgroup's memory.stat; 0 where it cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0


def rlimit_headroom() -> list[int]:
    """Bytes of address space (`ulimit -v`) and data (`ulimit -d`) this process has left."""
    try:
        import resource
    except ImportError:  # Windows
        return []

    used = {}
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmSize", "VmData"):
                used[name] = int(value.split()[0]) * 1024
    found = []
    for limit, name in ((resource.RLIMIT_AS, "VmSize"), (resource.RLIMIT_DATA, "VmData")):
        soft, _ = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY and name in used:
            found.append(soft - used[name])
    return found


def cpu_quota(root: Path = CGROUP_ROOT, membership: Path = MEMBERSHIP) -> int | None:
    """The CPUs' worth of time a CPU quota allows (`docker --cpus=2`, a Kubernetes limit),
    rounded up; None without one."""
    found = []
    for place, v2 in cgroup_folders("cpu", root, membership):
        if v2:
            with contextlib.suppress(OSError, ValueError, IndexError):
                quota, period = (place / "cpu.max").read_text().split()[:2]
                if quota != "max":
                    found.append(int(quota) / int(period))
        else:
            quota, period = (
                _number(place / "cpu.cfs_quota_us"),
                _number(place / "cpu.cfs_period_us"),
            )
            if quota and period:
                found.append(quota / period)
    return max(1, math.ceil(min(found))) if found else None


def cpu_count() -> int:
    """Cores this process may run on: its affinity mask, not the machine's total, and no more
    than its CPU quota allows."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cpu_quota()
    return min(cores or 1, quota) if quota else cores or 1
