"""A `visionpipe serve` process for tests: started on a free loopback port, stopped with Ctrl-C,
and plain-urllib requests to it."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import pty
import signal
import subprocess
import sys
import termios
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import ROOT, env

# Requests go straight to the loopback server, never through a proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT, no trailing slash
    proc: subprocess.Popen[str]
    log: Path  # the server's stderr

    def log_text(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def serve(
    model: Path,
    log: Path,
    *options: str,
    python: str = sys.executable,
    terminal: bool | None = None,
) -> Iterator[Served]:
    """`visionpipe serve --model MODEL --port 0 OPTIONS` until the block ends, then Ctrl-C (SIGINT),
    which must stop it cleanly (exit 0), unless the test stopped it itself (and checks how).
    `python`: the interpreter whose visionpipe runs it. `terminal`: run it with a controlling
    terminal of its own (True), or with none (False), rather than with whatever the tests have."""
    cmd = [python, "-m", "visionpipe.cli", "serve", "--model", str(model), "--port", "0"]
    session: dict[str, Any] = {}
    ends: tuple[int, ...] = ()  # a pseudo-terminal's, closed when the server is gone
    if terminal is False:
        session["start_new_session"] = True
    elif terminal:
        ends = pty.openpty()
        session["preexec_fn"] = functools.partial(_take_terminal, ends[1])
    with log.open("w") as err, contextlib.ExitStack() as closing:
        for end in ends:
            closing.callback(os.close, end)
        yield from _served(
            subprocess.Popen(
                [*cmd, *options],
                cwd=ROOT,
                env=env(),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                **session,
            ),
            log,
        )


def _served(proc: subprocess.Popen, log: Path) -> Iterator[Served]:
    """The server `proc` until the block ends, then Ctrl-C, as `serve` says."""
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the server prints its address once it is listening
        assert "http://" in line, f"no address from the server: {line!r}\n{log.read_text()}"
        url = line.split("http://", 1)[1].split()[0].rstrip("/")
        yield Served(f"http://{url}", proc, log)
    finally:
        stopped = proc.poll() is not None
        if not stopped:
            proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert stopped or code == 0, f"the server exited {code} on Ctrl-C:\n{log.read_text()}"


def _take_terminal(tty: int) -> None:
    """In the child: a session of its own, whose controlling terminal is `tty` (a pseudo one)."""
    os.setsid()
    fcntl.ioctl(tty, termios.TIOCSCTTY, 0)


def request(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30
) -> tuple[int, Any]:
    """(status, parsed JSON body) of a GET (no data) or POST; error statuses are returned too."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()
        assert exc.headers.get_content_type() == "application/json", (exc.code, body[:300])
        return exc.code, json.loads(body)


def post_image(url: str, data: bytes, content_type: str = "image/png") -> tuple[int, Any]:
    return request(url, data, {"Content-Type": content_type})


def multipart(files: list[tuple[str, bytes]], field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body of `files` (name, bytes), and its Content-Type."""
    boundary = uuid.uuid4().hex
    parts = [
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + b"\r\n"
        for name, data in files
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def post_files(url: str, files: list[tuple[str, bytes]]) -> tuple[int, Any]:
    body, content_type = multipart(files)
    return request(url, body, {"Content-Type": content_type})


def wait_until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
