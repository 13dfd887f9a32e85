"""Load test of `visionpipe serve` on the loopback interface: N concurrent clients, batched and
unbatched, next to the CLI's per-image cost, in one run.

Each server configuration runs as a user starts it (`visionpipe serve --port 0 ...`, a process
of its own); the clients are one asyncio process (aiohttp) posting CIFAR-10 test images as PNG
bodies, each client sending its next request when the last is answered. Every cell stops at
`--requests` requests or `--seconds` seconds, whichever comes first. Everything stays on
127.0.0.1.

    uv run python bench/serve_load.py --clients 1,8,32 --requests 2000 --seconds 2 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from benchlib import (
    DEFAULT_CIFAR_ZIP,
    REPO_ROOT,
    announce_machine,
    busy_note,
    fresh_export,
    load_cifar_jpegs,
    machine_line,
    png_bytes,
    publish,
)

from visionpipe.cifar_pickle import CLASSES

NAME = "serve_load"
HOST = "127.0.0.1"  # loopback only: the load never leaves this machine
# name -> (--max-batch, --batch-wait-ms)
CONFIGS = {"unbatched": (1, 0.0), "batched": (64, 0.0), "batched_wait_2ms": (64, 2.0)}
VISIONPIPE = Path(sys.executable).parent / "visionpipe"
CALL_BATCHES = [1, 4, 16, 64]  # batch sizes whose per-image model time is reported


def fresh_model(arch: str, tmp: Path) -> Path:
    """`arch` for CIFAR-10 at 32 px, freshly initialised, exported as the export stage does it:
    a model's cost per call does not depend on its weights."""
    path = tmp / arch / "model.onnx"
    path.parent.mkdir()
    fresh_export(arch, path, list(CLASSES))
    return path


@contextlib.contextmanager
def running_server(model: Path, max_batch: int, wait_ms: float) -> Iterator[str]:
    cmd = [str(VISIONPIPE), "serve", "--model", str(model), "--host", HOST, "--port", "0"]
    cmd += ["--max-batch", str(max_batch), "--batch-wait-ms", str(wait_ms)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "http://" not in line:
            raise RuntimeError(f"the server printed no address: {line!r}")
        yield "http://" + line.split("http://", 1)[1].split()[0].rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def _health(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/health") as resp:
        return await resp.json()


async def load(
    url: str, images: list[bytes], clients: int, max_requests: int, max_seconds: float
) -> dict[str, Any]:
    """`clients` clients posting images until max_requests are sent or max_seconds pass."""
    connector = aiohttp.TCPConnector(limit=clients)
    headers = {"Content-Type": "image/png"}
    latencies: list[float] = []
    errors, sent = 0, 0
    async with aiohttp.ClientSession(connector=connector, trust_env=False) as session:
        for image in images[:20]:  # warm-up: connections, the session's first runs
            async with session.post(f"{url}/predict", data=image, headers=headers) as resp:
                await resp.read()
        before = await _health(session, url)
        started = time.perf_counter()
        deadline = started + max_seconds

        async def client() -> None:
            nonlocal errors, sent
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                image = images[sent % len(images)]
                t0 = time.perf_counter()
                async with session.post(f"{url}/predict", data=image, headers=headers) as resp:
                    await resp.read()
                    errors += resp.status != 200
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - started
        after = await _health(session, url)
    calls = after["model_calls"] - before["model_calls"]
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors,
        "seconds": seconds,
        "requests_per_second": len(latencies) / seconds,
        "p50_ms": float(np.percentile(latencies, 50)) * 1e3,
        "p99_ms": float(np.percentile(latencies, 99)) * 1e3,
        "images_per_model_call": (after["images"] - before["images"]) / max(calls, 1),
    }


def time_cli(model: Path, images: list[bytes], tmp: Path, runs: int) -> dict[str, Any]:
    """`visionpipe predict` wall seconds: one image (median of `runs`), and a folder of all."""
    folder = tmp / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        (folder / f"{i:04d}.png").write_bytes(image)
    one = [str(VISIONPIPE), "predict", str(folder / "0000.png"), "--model", str(model)]
    subprocess.run(one, cwd=REPO_ROOT, capture_output=True, check=True)  # warm the page cache
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(one, cwd=REPO_ROOT, capture_output=True, check=True)
        seconds.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    every = [str(VISIONPIPE), "predict", str(folder), "--model", str(model)]
    subprocess.run(every, cwd=REPO_ROOT, capture_output=True, check=True)
    folder_seconds = time.perf_counter() - t0
    return {
        "one_image_seconds": statistics.median(seconds),
        "folder_images": len(images),
        "folder_seconds": folder_seconds,
        "folder_ms_per_image": folder_seconds / len(images) * 1e3,
    }


def call_costs(model: Path, batches: list[int], rounds: int = 5) -> dict[int, float]:
    """Model time per image, in ms, of one onnxruntime call at each batch size: what sharing a
    call can save, without the HTTP around it. The sizes take turns for `rounds` rounds of about
    0.2 s each; the fastest round's median counts, as other work on the machine only slows one."""
    from visionpipe.onnxrt import open_session

    session = open_session(model)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((max(batches), 3, 32, 32), dtype=np.float32)
    medians: dict[int, list[float]] = {batch: [] for batch in batches}
    for _ in range(rounds):
        for batch in batches:
            for _ in range(3):
                session.run(None, {name: x[:batch]})
            times, end = [], time.perf_counter() + 0.2
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                session.run(None, {name: x[:batch]})
                times.append(time.perf_counter() - t0)
            medians[batch].append(statistics.median(times) / batch * 1e3)
    return {batch: min(ms) for batch, ms in medians.items()}


def test_images(zip_path: Path, n: int) -> tuple[list[bytes], str]:
    if zip_path.is_file():
        chw = load_cifar_jpegs(zip_path, "test", n)[0]
        return [png_bytes(x) for x in chw], f"{n} CIFAR-10 test images as 32x32 PNGs"
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return [png_bytes(x) for x in noise], f"{n} random-noise 32x32 PNGs"


def run_cells(
    model: Path, images: list[bytes], args: argparse.Namespace
) -> dict[str, list[dict[str, Any]]]:
    """Every configuration at every client count, `--rounds` times. The servers of all
    configurations run side by side (an idle one costs nothing) and take turns cell by cell, so
    a burst of other work on the machine lands on all of them alike."""
    names = list(CONFIGS)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(running_server(model, *CONFIGS[name])) for name in names}
        turn = 0
        for r in range(args.rounds):
            for clients in args.clients:
                turn += 1
                for name in names[turn % len(names) :] + names[: turn % len(names)]:
                    cell = asyncio.run(
                        load(urls[name], images, clients, args.requests, args.seconds)
                    )
                    results[name].append({**cell, "round": r})
                    print(
                        f"  {name:17} {clients:3} clients: {cell['requests_per_second']:7.0f}"
                        f" req/s, p50 {cell['p50_ms']:6.2f} ms, p99 {cell['p99_ms']:6.2f} ms,"
                        f" {cell['images_per_model_call']:.1f} images/call"
                    )
    return results


def _median_cell(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput (the lower middle of an even count)."""
    ordered = sorted(cells, key=lambda c: c["requests_per_second"])
    return ordered[(len(ordered) - 1) // 2]


def _by_clients(cells: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    groups: dict[int, list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault(cell["clients"], []).append(cell)
    return [groups[k] for k in sorted(groups)]


def model_table(arch: str, run: dict[str, Any], cli_runs: int) -> list[str]:
    results, cli = run["results"], run["cli"]
    lines = [
        f"### `{arch}`",
        "",
        "| server | clients | req/s | vs unbatched | p50 ms | p99 ms | images per model call |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    base = {c["clients"]: c for c in map(_median_cell, _by_clients(results["unbatched"]))}
    for name, (max_batch, wait_ms) in CONFIGS.items():
        for cell in map(_median_cell, _by_clients(results[name])):
            ratio = cell["requests_per_second"] / base[cell["clients"]]["requests_per_second"]
            lines.append(
                f"| {name} (`--max-batch {max_batch} --batch-wait-ms {wait_ms:g}`) "
                f"| {cell['clients']} | {cell['requests_per_second']:.0f} | {ratio:.2f}x "
                f"| {cell['p50_ms']:.2f} | {cell['p99_ms']:.2f} "
                f"| {cell['images_per_model_call']:.1f} |"
            )
    errors = sum(c["errors"] for cells in results.values() for c in cells)
    costs = ", ".join(
        f"{ms:.3f} ms at batch {b}" for b, ms in sorted(run["call_ms_per_image"].items())
    )
    return [
        *lines,
        "",
        "The model call alone (onnxruntime in the bench's process, the fastest of 5 rounds): "
        f"{costs} per image.",
        f"Non-200 answers: {errors}. The CLI on the same model and images "
        f"(`.venv/bin/visionpipe predict`, process start included): one image "
        f"{cli['one_image_seconds'] * 1e3:.0f} ms (median of {cli_runs} runs); a folder of "
        f"{cli['folder_images']} images {cli['folder_seconds']:.2f} s, "
        f"{cli['folder_ms_per_image']:.2f} ms per image.",
        "",
    ]


def report(
    info: dict[str, Any], args: argparse.Namespace, what: str, runs: dict[str, dict[str, Any]]
) -> str:
    lines = [
        f"## Serving: `visionpipe serve` under load, batched and unbatched (`bench/{NAME}.py`)",
        "",
        f"Machine: {machine_line(info)}.",
        f"Command: `uv run python bench/{NAME}.py --archs {','.join(args.archs)} --clients "
        f"{','.join(map(str, args.clients))} --requests {args.requests} --seconds {args.seconds:g}"
        f" --rounds {args.rounds}`",
        "",
        "Models: freshly initialised, 10 classes at 32 px, exported as the export stage does it "
        f"(a call's cost does not depend on the weights). Requests: {what}, one per POST as the "
        "raw body. Server and clients share the machine's cores over 127.0.0.1 (the clients are "
        f"one asyncio process). Each cell: at most {args.requests} requests or {args.seconds:g} s"
        f" after 20 warm-up requests; the median of {args.rounds} rounds by throughput, the "
        "configurations' servers running side by side and taking turns cell by cell. Latency: "
        "from sending a request to reading its whole answer.",
        "",
    ]
    for arch, run in runs.items():
        lines += model_table(arch, run, args.cli_runs)
    return "\n".join(["\n".join(lines).rstrip(), *busy_note(info)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--archs", type=lambda s: s.split(","), default=["tutorial_cnn", "resnet18"]
    )
    parser.add_argument(
        "--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--requests", type=int, default=2000, help="per cell, at most")
    parser.add_argument("--seconds", type=float, default=2.0, help="per cell, at most")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the configurations")
    parser.add_argument("--images", type=int, default=256, help="distinct test images")
    parser.add_argument("--cli-runs", type=int, default=5)
    parser.add_argument("--zip", type=Path, default=DEFAULT_CIFAR_ZIP)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if min(args.clients) < 1 or args.requests < 1 or args.seconds <= 0:
        parser.error("--clients, --requests and --seconds must be positive")

    # Killed, still stop the server it started: SystemExit runs running_server's cleanup.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = announce_machine()
    images, what = test_images(args.zip, args.images)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        for arch in args.archs:
            model = fresh_model(arch, tmp)
            print(f"{arch}; images: {what}")
            cli = time_cli(model, images, tmp / arch, args.cli_runs)
            costs = call_costs(model, CALL_BATCHES)
            runs[arch] = {"cli": cli, "call_ms_per_image": costs}
            runs[arch]["results"] = run_cells(model, images, args)
    body = report(info, args, what, runs)
    payload = {"machine": info, "args": {**vars(args), "zip": str(args.zip)}, "runs": runs}
    publish(NAME, body, payload, not args.no_write)


if __name__ == "__main__":
    main()
