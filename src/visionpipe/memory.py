"""Memory: how much the host and an accelerator have free, how much of it split images may take
(the memory budget), and glibc's reuse of freed host memory."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import re
import sys
from pathlib import Path

import torch

from visionpipe import limits

log = logging.getLogger(__name__)


# Bytes of split images a training process may copy into host memory (e.g. 8GiB, 500MB, 0);
# unset: half of the memory available when training starts, divided among torchrun's
# processes. An environment variable, not a param: it depends on the machine, not the
# experiment, and changes no result.
MEMORY_BUDGET_ENV = "VISIONPIPE_MEMORY_BUDGET"


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


class MemoryBudgetError(ValueError):
    """$VISIONPIPE_MEMORY_BUDGET is not a size."""


def parse_bytes(text: str) -> int:
    """'8GiB', '500 MB', '1e9', '0' -> bytes; ValueError naming the accepted forms."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    try:
        if match is None or unit not in _UNITS:
            raise ValueError
        return int(float(match.group(1)) * _UNITS[unit])
    except ValueError:
        raise MemoryBudgetError(
            f"{MEMORY_BUDGET_ENV}={text!r} is not a size: use bytes or a number with a unit "
            "(500MB, 8GiB, 0)"
        ) from None


def available_memory() -> int:
    """Bytes of host memory this process may still take: the host's available memory (Linux:
    MemAvailable, else the total), less where a container's memory limit (its cgroup's) or
    `ulimit -v` leaves less. A container sees the host's /proc/meminfo: a budget from that
    alone reads splits that its limit then kills the process for."""
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                host = int(line.split()[1]) * 1024
    return max(0, min([host, *limits.memory_headroom(), *limits.rlimit_headroom()]))


def memory_budget() -> int:
    """Bytes of split images this process may copy into host memory: $VISIONPIPE_MEMORY_BUDGET,
    else half the memory available now, shared by the processes torchrun starts on this machine
    (each holds its own copy)."""
    value = os.environ.get(MEMORY_BUDGET_ENV)
    if value:
        return parse_bytes(value)
    return available_memory() // (2 * int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def free_memory(device: torch.device) -> int | None:
    """Bytes free on an accelerator (MPS: its recommended working set), None on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    if device.type == "mps":
        return torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
    return None


# glibc's mallopt() parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc reuse freed host memory instead of handing it back to the OS.

    By default every block over 32 MiB (a batch's activations at batch 1024) is a fresh mmap,
    whose pages fault in on first touch and are unmapped on free: a quarter of a `fast` train
    step on a 2-core CPU went to faulting in zero pages. With mmap off and the heap never
    trimmed, the memory of one step is reused by the next. Peak memory is the same; it is
    just not returned until the process ends. Values are untouched: results are bit-identical.
    Returns whether it applied (Linux with glibc only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        log.debug("no glibc mallopt: host memory allocation left as it is")
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
