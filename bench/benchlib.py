"""Shared pieces of the benchmarks: the machine's description, real CIFAR-10 images, result files.

Every benchmark writes its raw figures to bench/results/<name>.json and rewrites its own section
of bench/RESULTS.md, so a figure is never quoted without the machine it was taken on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_MD = BENCH_DIR / "RESULTS.md"
RESULTS_DIR = BENCH_DIR / "results"
# The same place the project's realdata tests look: ../shared/datasets beside the checkout.
DEFAULT_CIFAR_ZIP = REPO_ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.zip"

RESULTS_HEADER = """# Benchmark results

Written by the scripts in bench/ (see bench/README.md); each script rewrites only its own section.
Timings come from one machine at one time: compare figures only within a section, and rerun on a
quiet machine before quoting them. Raw figures: bench/results/<name>.json.
"""


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, cores, library versions, date and load: what a reader needs to weigh a timing."""
    import torch

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # a bare GPU machine may lack it; the train benchmarks do not need it
        ort_version = "absent"

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        # A busy machine explains odd figures; the 1-minute load average at start says if it was.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    return info


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']}" if info["gpu"] else ", no GPU"
    return (
        f"{info['cpu']}, {info['usable_cores']} cores usable ({info['logical_cores']} logical), "
        f"torch {info['torch']} ({info['torch_threads']} threads), "
        f"onnxruntime {info['onnxruntime']}{gpu}; {info['date']}; "
        f"load average at start {info['load_average_1min']:.2f}"
    )


def announce_machine() -> dict[str, Any]:
    """`machine_info()`, printed as its one line first: a run's output names its machine."""
    info = machine_info()
    print(f"machine: {machine_line(info)}")
    return info


def section_head(title: str, name: str, info: dict[str, Any]) -> list[str]:
    """A RESULTS.md section's first lines: its title, the machine and the command that ran."""
    command = " ".join(["uv run python", f"bench/{name}.py", *sys.argv[1:]])
    return [f"## {title} (`bench/{name}.py`)", "", f"Machine: {machine_line(info)}.",
            f"Command: `{command}`", ""]  # fmt: skip


def busy_note(info: dict[str, Any]) -> list[str]:
    """A caveat for RESULTS.md when the machine was not quiet at the start."""
    # Busy: over a quarter of the usable cores' worth of runnable work (0.5 on 2 cores).
    cores = info.get("usable_cores") or 2
    if info["load_average_1min"] and info["load_average_1min"] > cores / 4:
        return [
            "",
            "Note: the machine was busy at start (load average above); treat these "
            "figures as provisional.",
        ]
    return []


def summarize(samples: list[float]) -> dict[str, float]:
    """Median, p90, min and max of timings (any unit)."""
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered),
        "p90": float(np.percentile(ordered, 90)),
        "min": ordered[0],
        "max": ordered[-1],
        "n": len(ordered),
    }


def result_name(name: str, info: dict[str, Any]) -> str:
    """A GPU machine's figures get a section of their own: they never replace the CPU host's."""
    return f"{name}_cuda" if info["gpu"] else name


def write_json_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def update_results_md(name: str, body: str) -> Path:
    """Replace (or append) the section between this benchmark's markers in RESULTS.md."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    section = f"{start}\n{body.strip()}\n{end}"
    text = RESULTS_MD.read_text() if RESULTS_MD.is_file() else RESULTS_HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    RESULTS_MD.write_text(text)
    return RESULTS_MD


def load_cifar_jpegs(
    zip_path: Path, split: str, n: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 NCHW, labels int64, classes) of `n` images of `split`, classes interleaved.

    Decoded with visionpipe.images.load_array, exactly as the preprocess stage decodes them.
    """
    from visionpipe.images import load_array

    if not zip_path.is_file():
        raise FileNotFoundError(
            f"{zip_path} not found: pass --zip with the path of cifar10-jpeg.zip "
            "(layout cifar10-jpeg/{train,test}/<class>/NNNN.jpg)"
        )
    with zipfile.ZipFile(zip_path) as zf:
        by_class: dict[str, list[str]] = {}
        for name in zf.namelist():
            parts = name.split("/")
            if len(parts) == 4 and parts[1] == split and parts[3].endswith(".jpg"):
                by_class.setdefault(parts[2], []).append(name)
        if not by_class:
            raise ValueError(f"{zip_path} holds no {split}/<class>/*.jpg images")
        classes = sorted(by_class)
        lists = [sorted(by_class[c]) for c in classes]
        available = sum(len(names) for names in lists)
        if n > available:
            raise ValueError(f"asked for {n} {split} images; {zip_path} holds {available}")
        # Round-robin over classes, so any prefix is class-balanced like a shuffled CIFAR split.
        picks: list[tuple[str, int]] = []
        row = 0
        while len(picks) < n:
            for label, names in enumerate(lists):
                if row < len(names) and len(picks) < n:
                    picks.append((names[row], label))
            row += 1
        images = np.stack([load_array(zf.read(name), name, 32) for name, _ in picks])
    labels = np.array([label for _, label in picks], dtype=np.int64)
    return images, labels, classes


def png_bytes(chw: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(buf, format="PNG")
    return buf.getvalue()


# --- running a stage as a user does, watching its memory ----------------------------------------


def _tree(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):  # the task ended meanwhile
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (/proc/<pid>/stat fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _memory(pid: int) -> dict[str, int]:
    """Resident bytes of one process: anonymous (its own), file-backed (mapped files, libraries)."""
    out = {"anon": 0, "file": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                out["anon"] = int(line.split()[1]) * 1024
            elif line.startswith(("RssFile:", "RssShmem:")):
                out["file"] += int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


@dataclass
class Watched:
    """A finished command: its wall time and the peak resident memory of its process tree."""

    seconds: float
    returncode: int
    output: str
    peak_rss: int  # anonymous + file-backed, summed over the process and its children
    peak_anon: int  # anonymous only: memory the processes own (file pages the OS can drop)
    peak_main_rss: int  # the command's own process
    cpu_seconds: float  # user + system time of all its processes (sampled: a slight undercount)

    def check(self) -> Watched:
        if self.returncode != 0:
            raise RuntimeError(f"command failed ({self.returncode}):\n{self.output[-4000:]}")
        return self


def run_watched(
    cmd: list[str], cwd: Path, env: dict[str, str] | None = None, interval: float = 0.1
) -> Watched:
    """Run `cmd`, sampling the resident memory of its process tree every `interval` seconds."""
    with tempfile.TemporaryFile("w+") as log:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak = {"rss": 0, "anon": 0, "main": 0}
        cpu: dict[int, float] = {}
        while proc.poll() is None:
            pids = _tree(proc.pid)
            cpu.update({p: max(cpu.get(p, 0.0), _cpu_seconds(p)) for p in pids})
            mems = {p: _memory(p) for p in pids}
            peak["rss"] = max(peak["rss"], sum(m["anon"] + m["file"] for m in mems.values()))
            peak["anon"] = max(peak["anon"], sum(m["anon"] for m in mems.values()))
            main = mems.get(proc.pid, {"anon": 0, "file": 0})
            peak["main"] = max(peak["main"], main["anon"] + main["file"])
            time.sleep(interval)
        seconds = time.perf_counter() - started
        log.seek(0)
        output = log.read()
    return Watched(
        seconds, proc.returncode, output, peak["rss"], peak["anon"], peak["main"], sum(cpu.values())
    )


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def publish(name: str, body: str, payload: dict[str, Any], write: bool) -> None:
    """Print a benchmark's RESULTS.md section; with `write`, also record it and its raw figures."""
    print("\n" + "=" * 72 + "\n" + body + "\n" + "=" * 72)
    if write:
        payload = {"benchmark": name, **payload}
        print(f"wrote {write_json_result(name, payload)} and {update_results_md(name, body)}")


def fresh_export(arch: str, dest: Path, classes: list[str], size: int = 32) -> Any:
    """`arch` freshly initialised (seed 0) for `classes` at `size` px, exported to `dest` as the
    export stage does it; returns the eager model. A model's cost per call does not depend on
    its weights."""
    import torch

    from visionpipe import __version__
    from visionpipe.config.export import ExportConfig
    from visionpipe.export import export_onnx
    from visionpipe.modelfile import ModelInfo
    from visionpipe.models import build_model

    torch.manual_seed(0)
    model = build_model(arch, len(classes), size)
    info = ModelInfo(
        arch=arch,
        num_classes=len(classes),
        image_size=size,
        arch_params={},
        normalize=False,
        mean=[0.0, 0.0, 0.0],
        std=[1.0, 1.0, 1.0],
        classes=list(classes),
        params={},
        visionpipe_version=__version__,
        torch_version=torch.__version__,
    )
    export_onnx(model, info, dest, ExportConfig().opset)
    return model.eval()
