"""`visionpipe` command line: predict images with a trained model; compose params.yaml.

Imports stay lazy so `visionpipe predict` with the ONNX backend answers without importing torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from visionpipe import logs, paths


def _predict(args: argparse.Namespace) -> int:
    from visionpipe import predict

    return predict.predict_command(
        args.inputs,
        args.backend,
        args.model,
        args.topk,
        args.batch_size,
        args.json,
        args.csv,
        args.grid,
    )


def _params(args: argparse.Namespace) -> int:
    import yaml

    from visionpipe.config import DEFAULT_PARAMS
    from visionpipe.config.compose import compose_yaml, diff_keys
    from visionpipe.config.params import parse_params
    from visionpipe.fsutil import write_text

    try:
        text = compose_yaml(args.overrides)
        parse_params(yaml.safe_load(text), origin="the composed params")
    except Exception as exc:  # Hydra's and the loader's errors both name the bad override
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = DEFAULT_PARAMS
    old = yaml.safe_load(path.read_text()) if path.is_file() else {}
    changed = diff_keys(old, yaml.safe_load(text))
    write_text(path, text)
    print(f"wrote {path}" + (f"; changed: {', '.join(changed)}" if changed else "; unchanged"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionpipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("predict", help="classify images, folders or globs")
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or globs")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"{paths.ONNX_MODEL} (onnx backend) or {paths.MODEL} (torch) by default",
    )
    p.add_argument("--backend", choices=("onnx", "torch"), default="onnx")
    p.add_argument("--topk", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", type=Path, help="also write the predictions as JSON here")
    p.add_argument("--csv", type=Path, help="also write the predictions as CSV here")
    p.add_argument("--grid", type=Path, help="also write a labelled image grid PNG here")
    p.set_defaults(func=_predict)
    c = sub.add_parser(
        "params",
        help="write params.yaml from conf/ (as `dvc exp run -S` does), e.g. after editing conf/",
    )
    c.add_argument("overrides", nargs="*", help="key=value or recipe=NAME, as after -S")
    c.set_defaults(func=_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for flag in ("topk", "batch_size"):
        if getattr(args, flag, 1) < 1:
            build_parser().error(f"--{flag.replace('_', '-')} must be at least 1")
    logs.setup(logging.WARNING)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
