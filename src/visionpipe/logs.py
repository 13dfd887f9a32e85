"""Logging set-up and the error handling shared by the stage scripts and the CLI."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from visionpipe import fsutil

log = logging.getLogger("visionpipe")


_DVC_CACHE = (
    "DVC's cache, .dvc/cache, keeps a copy of every output (`dvc gc` prunes it, "
    "`dvc cache dir` puts it on another disk)"
)


def setup(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    # The ONNX exporter's passes log every rewrite at INFO; keep the stage output readable.
    for noisy in ("onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def is_user_error(exc: BaseException) -> bool:
    """Errors raised by visionpipe for bad input carry a message a user can act on."""
    return isinstance(exc, FileNotFoundError) or type(exc).__module__.startswith("visionpipe.")


def run_stage(main: Callable[[], int | None], interrupted: str = "") -> None:
    """Run a stage's main(): a user error prints its message (no traceback) and exits 1; Ctrl-C
    prints one line (plus `interrupted`, what happens next) and exits 130, the shell's code for it;
    a full disk prints one line saying where and how much is free (plus `interrupted`), exit 1.

    Set VISIONPIPE_DEBUG=1 to see the traceback anyway. Anything else is a bug and keeps its
    traceback.
    """
    setup()
    try:
        code = main()
    except KeyboardInterrupt:
        # Ctrl-C is an ordinary way to stop a run (train resumes from its checkpoint): the
        # traceback of wherever the loop happened to be would only bury that.
        if os.environ.get("VISIONPIPE_DEBUG"):
            raise
        log.error("interrupted (Ctrl-C)%s", f"; {interrupted}" if interrupted else "")
        sys.exit(130)
    except Exception as exc:
        if os.environ.get("VISIONPIPE_DEBUG"):
            raise
        full = fsutil.disk_full_cause(exc)
        if full is not None:
            # A full disk is the user's to fix, wherever the write was (DVCLive, TensorBoard).
            if isinstance(full, fsutil.DiskFullError):  # an atomic write's: names its file
                text = str(full)
            else:
                text = fsutil.disk_full_message(full.filename or os.getcwd())
            log.error("%s. %s%s", text, _DVC_CACHE, f"; {interrupted}" if interrupted else "")
            sys.exit(1)
        if not is_user_error(exc):
            raise
        log.error("%s", exc)
        sys.exit(1)
    sys.exit(code or 0)
