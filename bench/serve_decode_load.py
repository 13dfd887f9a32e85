"""`visionpipe serve` while large images decode: how long a small request waits with N
64-megapixel PNGs in flight, against the same request alone, and how long a SIGTERM 1 s after
they start takes and what their clients get, in one run.

The large image is a solid 7990x8000 PNG (about 200 KB, seconds to decode): the size a camera
makes and the server's limit takes. The model is a fresh tutorial CNN at 32 px. `--baseline`
names a checkout of another version (with its .venv, `uv sync` there): its server runs the same
rounds, alternating with this one's.

    git worktree add /tmp/old 8e4a2b4 && (cd /tmp/old && uv sync --locked)
    uv run python bench/serve_decode_load.py --large 12 --rounds 3 --baseline /tmp/old
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from benchlib import REPO_ROOT, announce_machine, busy_note, fresh_export, publish, section_head
from PIL import Image

NAME = "serve_decode_load"


def png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(buf, "PNG")
    return buf.getvalue()


def start(model: Path, checkout: Path) -> tuple[subprocess.Popen, str]:
    cmd = [str(checkout / ".venv/bin/visionpipe"), "serve", "--model", str(model), "--port", "0"]
    proc = subprocess.Popen(cmd, cwd=checkout, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, "http://" + line.split("http://", 1)[1].split()[0].rstrip("/")


async def post(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[int, float]:
    """Status (0: no answer) and seconds of one upload."""
    form = aiohttp.FormData()
    form.add_field("file", data, filename="x.png", content_type="image/png")
    began = time.perf_counter()
    try:
        async with session.post(f"{url}/predict", data=form) as resp:
            await resp.read()
            return resp.status, time.perf_counter() - began
    except aiohttp.ClientError:
        return 0, time.perf_counter() - began


async def one_round(
    model: Path, checkout: Path, large: int, big: bytes, small: bytes
) -> dict[str, Any]:
    """The small request's wait under load (all then answered); then, on a fresh server, a
    SIGTERM 1 s after the large uploads start: the exit time and what their clients got."""
    async with aiohttp.ClientSession() as session:
        proc, url = start(model, checkout)
        alone = (await post(session, url, small))[1]
        loads = [asyncio.create_task(post(session, url, big)) for _ in range(large)]
        await asyncio.sleep(1.0)  # the uploads are in, their decodes queued or running
        loaded = (await post(session, url, small))[1]
        await asyncio.gather(*loads)
        proc.terminate()
        await asyncio.to_thread(proc.wait, 120)

        proc, url = start(model, checkout)
        loads = [asyncio.create_task(post(session, url, big)) for _ in range(large)]
        await asyncio.sleep(1.0)
        stopped = time.perf_counter()
        proc.terminate()
        await asyncio.to_thread(proc.wait, 120)
        stop_s = time.perf_counter() - stopped
        statuses = [status for status, _ in await asyncio.gather(*loads)]
    return {
        "alone_s": alone,
        "loaded_s": loaded,
        "stop_s": stop_s,
        "answered_200": statuses.count(200),
        "answered_503": statuses.count(503),
        "no_answer": statuses.count(0),
    }


def report(info: dict[str, Any], args: argparse.Namespace, runs: dict[str, list[dict]]) -> str:
    lines = section_head("serve while large images decode", NAME, info)
    lines += [
        f"{args.large} uploads of a 7990x8000 PNG in flight; medians of {args.rounds} rounds,"
        " the versions alternating:",
        "",
        "| version | an 8x8 PNG alone | with the large decoding | SIGTERM 1 s in: exit |"
        " the large uploads got 200 / 503 / no answer |",
        "|---|---|---|---|---|",
    ]
    for version, rounds in runs.items():
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        got = " / ".join(f"{med[k]:g}" for k in ("answered_200", "answered_503", "no_answer"))
        lines.append(
            f"| {version} | {med['alone_s'] * 1000:.1f} ms | {med['loaded_s'] * 1000:.1f} ms"
            f" | {med['stop_s']:.1f} s | {got} |"
        )
    return "\n".join(lines + busy_note(info))


def version(checkout: Path) -> str:
    out = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.strip() or str(checkout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=12, help="64-megapixel uploads in flight")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a checkout of another version to compare")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    info = announce_machine()
    big, small = png((7990, 8000)), png((8, 8))
    checkouts = [REPO_ROOT, *([args.baseline.resolve()] if args.baseline else [])]
    runs: dict[str, list[dict]] = {version(c): [] for c in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.onnx"
        fresh_export("tutorial_cnn", model, ["a", "b", "c"])
        for _ in range(args.rounds):
            for checkout, rounds in zip(checkouts, runs.values(), strict=True):
                rounds.append(asyncio.run(one_round(model, checkout, args.large, big, small)))
                print(version(checkout), rounds[-1], flush=True)
    payload = {"machine": info, "args": {**vars(args), "baseline": str(args.baseline)}}
    publish(NAME, report(info, args, runs), {**payload, "runs": runs}, not args.no_write)


if __name__ == "__main__":
    main()
