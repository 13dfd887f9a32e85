"""What a container or `ulimit` leaves the process, read from fake cgroup trees laid out as the
kernel lays out v1 and v2, and from a real `ulimit -v`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from visionpipe import limits


def _write(folder: Path, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text + "\n")


def _membership(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cgroup"
    path.write_text(text)
    return path


def test_a_container_s_memory_limit_is_headroom_whether_its_own_or_a_parent_s(
    tmp_path: Path,
) -> None:
    # /proc/meminfo inside a container is the host's: the limit is in its cgroup, or above it.
    v2 = tmp_path / "v2"
    _write(v2, memory_max="max", memory_current="0")
    _write(v2 / "job", memory_max=str(4 * 2**30), memory_current=str(3 * 2**30))
    _write(v2 / "job" / "step", memory_max="max", memory_current=str(2**30))
    member = _membership(tmp_path, "0::/job/step\n")
    assert limits.memory_headroom(v2, member) == [2**30]
    # Page cache the kernel drops first is not used up: 512 MiB of it in the limited group.
    (v2 / "job" / "memory.stat").write_text(f"anon 123\ninactive_file {2**29}\nactive_file 7\n")
    assert limits.memory_headroom(v2, member) == [2**30 + 2**29]
    assert limits.memory_headroom(v2, _membership(tmp_path, "0::/\n")) == []


def test_a_v1_memory_limit_is_found_among_the_other_hierarchies(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    _write(v1 / "memory", memory_limit_in_bytes=str(2**63 - 4096), memory_usage_in_bytes="0")
    _write(
        v1 / "memory" / "docker" / "abc",
        memory_limit_in_bytes=str(2**31),
        memory_usage_in_bytes=str(2**29),
    )
    member = _membership(tmp_path, "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert limits.memory_headroom(v1, member) == [2**31 - 2**29]


def test_a_cpu_quota_caps_the_cores(tmp_path: Path) -> None:
    # `docker --cpus=2.5` on a big host: 3 workers, not one per host core.
    v2 = tmp_path / "v2"
    _write(v2, cpu_max="max 100000")
    _write(v2 / "ctr", cpu_max="250000 100000")
    assert limits.cpu_quota(v2, _membership(tmp_path, "0::/ctr\n")) == 3
    assert limits.cpu_quota(v2, _membership(tmp_path, "0::/\n")) is None
    v1 = tmp_path / "v1"
    _write(v1 / "cpu" / "k8s", cpu_cfs_quota_us="50000", cpu_cfs_period_us="100000")
    _write(v1 / "cpu", cpu_cfs_quota_us="-1", cpu_cfs_period_us="100000")
    assert limits.cpu_quota(v1, _membership(tmp_path, "3:cpu,cpuacct:/k8s\n")) == 1


def test_ulimit_v_bounds_the_memory_available() -> None:
    # A process under `ulimit -v` gets at most what the limit leaves it, whatever the host has.
    script = (
        "import resource\n"
        "from visionpipe import memory\n"
        "size = next(int(l.split()[1]) * 1024 for l in open('/proc/self/status')"
        " if l.startswith('VmSize:'))\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + 2**29, resource.RLIM_INFINITY))\n"
        "print(memory.available_memory())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert 2**28 < int(out.stdout) <= 2**29
