"""`visionpipe` command line: predict images with a trained model, serve it over HTTP; compose
params.yaml.

Imports stay lazy so `visionpipe predict` with the ONNX backend answers without importing torch,
and no command but `serve` imports the HTTP server.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import math
import os
import re
import shlex
import sys
import unicodedata
import urllib.parse
from pathlib import Path
from typing import Any

from visionpipe import __version__, fsutil, logs, paths, streams


def _predict(args: argparse.Namespace) -> int:
    from visionpipe import predict

    named = (args.json, args.csv, args.grid)
    files = [f for f in named if f is not None and f != Path("-") and str(f) not in STDOUT_NAMES]
    if sys.stdout is None and not files:
        # Python's stdout when the command was started with it closed (`>&-`): print() would
        # drop the table without a word, and the exit status would say all went well.
        print(
            "error: standard output is closed, so the predictions would go nowhere: "
            "give --json, --csv or --grid a file, or leave stdout open",
            file=sys.stderr,
        )
        return 2
    return predict.predict_command(
        args.inputs,
        args.backend,
        args.model,
        args.topk,
        args.batch_size,
        args.json,
        args.csv,
        args.grid,
        model_hint=_photo_as_model(getattr(args, "argv", [])),
    )


def _photo_as_model(argv: list[str]) -> str:
    """For `visionpipe predict --model dog.jpg ...`: the photo given as the model, and the
    command, as argparse read it (abbreviated options too), with the photo among the photos;
    "" where --model names no photo or the line does not parse."""
    from visionpipe.images import is_image_name  # here: --help stays instant

    if "predict" not in argv:
        return ""
    predict = _subparser("predict")
    # Read as argparse reads it, the photos optional: `--model dog.jpg` alone is the case.
    next(a for a in predict._actions if a.dest == "inputs").nargs = "*"
    at = argv.index("predict") + 1
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            args, extra = predict.parse_known_args(argv[at:])
    except SystemExit:  # an option without its value: no command to offer
        return ""
    photo = None if args.model is None else str(args.model)  # --model is read as a Path
    if extra or photo is None or not (is_image_name(photo) and Path(photo).is_file()):
        return ""
    words = ["uv", "run", "visionpipe", *argv[:at]]
    for action in predict._actions:
        value = getattr(args, action.dest, None)
        named = action.option_strings and action.dest not in ("help", "model")
        if named and value is not None and value != action.default:
            words += [action.option_strings[-1], str(value)]
    command = " ".join(_shell_word(w) for w in [*words, "--", photo, *args.inputs])
    return f"the photos to predict come after the options, not as --model: `{command}`"


def _subparser(name: str) -> argparse.ArgumentParser:
    """The parser of command `name`, of a parser built anew."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def _serve(args: argparse.Namespace) -> int:
    from visionpipe import serve

    try:
        model = args.model or paths.default_model(paths.ONNX_MODEL)
    except FileNotFoundError as exc:
        logging.getLogger("visionpipe.serve").error("%s", exc)
        return 2
    config = serve.ServeConfig(
        model,
        args.host,
        args.port,
        args.topk,
        args.max_batch,
        args.batch_wait_ms,
        args.max_upload_mb,
        args.read_timeout_s,
        args.keepalive_s,
        tuple(args.allow_origin),
        tuple(args.allow_host),
    )
    return serve.serve_command(config)


DECIMAL_COMMA = re.compile(r"[\w.]+=-?\d+,\d+")  # train.lr=0,01: a decimal comma, as typed


PATH_KEYS = ("data.source", "model.weights", "launch.data_root", "predict.inputs")


def _relative_path_override(overrides: list[str], root: Path) -> str | None:
    """The first override giving a path key a path from this folder, or None: one written so
    (`data.source=../photos`, `./x.zip`, `.`), or one that is there from here but not from the
    project's folder `root`, where the stages read it. A bare name (`cifar10-jpeg.zip`) may
    mean one under launch.data_root, and `~`, `$HOME` or a Windows path get the stages' own
    handling."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") not in PATH_KEYS:
            continue
        if re.search(r"""(^|[\[,'"\s])\.\.?($|[/\],'"\s])""", value):
            return override
        items = (v.strip(" '\"") for v in re.split(r"[\[\],]", value))
        here = [v for v in items if v and not v.startswith(("~", "$", "/")) and Path(v).exists()]
        if any(not (root / v).exists() for v in here):
            return override
    return None


def _decimal_comma(override: str) -> bool:
    """Whether `override` gives a key whose value is a decimal number (train.lr) `0,01`, as a
    decimal comma; `train.epochs=10,20` is a sweep, as Hydra says."""
    import typing

    from visionpipe.config.params import Params

    if not DECIMAL_COMMA.fullmatch(override):
        return False
    model: Any = Params
    try:
        *sections, name = override.split("=")[0].split(".")
        for section in sections:
            model = model.model_fields[section].annotation
        annotation = model.model_fields[name].annotation
    except (KeyError, AttributeError):  # no such key: Hydra's and the loader's errors say so
        return False
    return annotation is float or float in typing.get_args(annotation)  # float | None too


QUOTE_HINT = (
    "A value holding accents, CJK, emoji, ~, #, commas or quotes goes in single quotes, inside"
    " the shell's double quotes: \"data.source='/home/me/照片'\"; one holding an apostrophe in"
    " double quotes, inside the shell's single quotes: 'data.source=\"/home/me/John'\"'\"'s"
    " photos\"'"
)


def _params(args: argparse.Namespace) -> int:
    import yaml

    from visionpipe.config import DEFAULT_PARAMS
    from visionpipe.config.compose import (
        CONF_DIR,
        changes_text,
        compose_yaml,
        diff_keys,
        warn_unchosen_recipe,
    )
    from visionpipe.config.params import parse_params
    from visionpipe.fsutil import write_text

    root = _conf_project()
    if isinstance(root, str):
        print(f"error: {root}", file=sys.stderr)
        return 2
    if root != Path() and (relative := _relative_path_override(args.overrides, root)) is not None:
        print(
            f"error: {relative} is a path relative to this folder, and params.yaml's paths are "
            f"read from the project's ({root}): give it absolute, or as from there (run "
            "visionpipe params in the project's folder)",
            file=sys.stderr,
        )
        return 2
    if comma := next((o for o in args.overrides if _decimal_comma(o)), None):
        key, value = comma.split("=", 1)
        print(
            f"error: {comma}: a decimal number is written with a dot ({key}="
            f"{value.replace(',', '.')}); a comma makes a list, which `dvc exp run --queue -S` "
            "runs one experiment per value of",
            file=sys.stderr,
        )
        return 2
    try:
        text = compose_yaml(args.overrides, root / CONF_DIR)
        raw = yaml.safe_load(text)
        warn_unchosen_recipe(str(raw.get("recipe")), root / CONF_DIR)
        if lacking := _lacking_in_conf(raw, args.overrides):
            print(f"error: {lacking}", file=sys.stderr)
            return 2
        parse_params(raw, origin="params.yaml as composed", complete=True)
    except Exception as exc:  # Hydra's and the loader's errors both name the bad override
        print(_compose_error(exc, args.overrides), file=sys.stderr)
        return 2
    path = root / DEFAULT_PARAMS
    old, unreadable = _old_params(path)
    write_text(path, text)
    shown = os.path.relpath(path)  # from the folder the command ran in
    if unreadable or not old:
        print(f"wrote {shown}" + (f", replacing one that {unreadable}" if unreadable else ""))
        return 0
    # The values, not the keys alone: composing anew drops what `dvc exp apply` committed.
    changed = changes_text(old, raw, diff_keys(old, raw), most=20)
    print(f"wrote {shown}" + (f"; changed: {changed}" if changed else "; unchanged"))
    return 0


def _conf_project() -> Path | str:
    """The folder whose conf/ composes params.yaml: here, or the project this folder is inside
    (as dvc finds its project); else the error."""
    from visionpipe.config.compose import CONF_DIR

    if (CONF_DIR / "config.yaml").is_file():
        return Path()
    root = paths.project_root()
    if root is None or not (root / CONF_DIR / "config.yaml").is_file():
        return (
            f"no {CONF_DIR / 'config.yaml'} here or in a project above ({Path.cwd()}): run "
            "visionpipe params in the project's folder"
        )
    return root


def _old_params(path: Path) -> tuple[dict[str, Any], str]:
    """params.yaml as it is, to say what changed; or {} and why it cannot be compared (a merge's
    conflict markers, a hand edit gone wrong): composed anew, it is replaced whole."""
    import yaml

    if not path.is_file():
        return {}, ""
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return {}, f"could not be read ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    if old is None:  # an empty file
        return {}, ""
    if not isinstance(old, dict):
        return {}, f"held no mapping of params (a YAML {type(old).__name__})"
    return old, ""


def _lacking_in_conf(raw: object, overrides: list[str]) -> str | None:
    """The error for keys of the code that conf/ gives no value (and no `~key` removed): a key
    new in the code whose line conf/config.yaml lacks, with the line to add."""
    from visionpipe.config import default_line, missing_keys
    from visionpipe.config.params import Params

    if not isinstance(raw, dict):
        return None  # parse_params says what is wrong with it
    removed = {o[1:].split("=", 1)[0] for o in overrides if o.startswith("~")}
    keys = [k for k in missing_keys(Params, raw) if k not in removed | {"recipe", "about"}]
    if not keys:
        return None
    lines = [f"  {default_line(Params, k)}" for k in keys]
    return (
        "conf/ gives no value for keys the code has: add each line to conf/config.yaml, "
        "where it says, at the code's default:\n" + "\n".join(lines)
    )


# What an input method (Chinese, Japanese) types in full width beside the ASCII a command
# needs, which NFKC does not map to it.
IME_PUNCTUATION = {"‘": "'", "’": "'", "“": '"', "”": '"', "。": ".", "、": ","}


def _compose_error(exc: Exception, overrides: list[str]) -> str:
    """The lines saying why composing `overrides` failed, and the hint that fits."""
    # Hydra's list of where it looked for a config (`recipe=nope`) is its own business.
    text = _override_error(exc).split("\nConfig search path:")[0].rstrip()
    # Hydra's parse error points at the bad character on its next line: kept in its column.
    message = f"error:\n{text}" if "\n" in text and "^" in text else f"error: {text}"
    # Hydra's own advice for a comma names its --multirun, which this command has not.
    message = message.replace(
        "3. To sweep over it, add --multirun to your command line",
        "3. To run one experiment per value: dvc exp run --queue -S (docs/parameters.md)",
    )
    # The one the error is about: named whole (Hydra's), or by its key (params.yaml's check).
    named = [o for o in overrides if o in text] or [
        o for o in overrides if f"'{o.split('=', 1)[0].lstrip('+~')}'" in text
    ]
    if (wide := _full_width(named)) is not None:
        return f"{message}\n{wide}"
    # `train.lr= 0.1`: the shell made two words of it (Hydra's error depends on the value).
    split = [(a, b) for a, b in itertools.pairwise(overrides) if a.endswith("=") and "=" not in b]
    if split:
        (key, value), *_ = split
        return f"{message}\n{key!r} and {value!r} are one override: {key}{value}"
    if "missing EQUAL at '<EOF>'" in text and (bare := [o for o in named if "=" not in o]):
        return (
            f"{message}\n{bare[0]!r} has no '=': give key=value, e.g. train.lr=0.01 or recipe=fast"
        )
    spaced = [o for o in named if re.match(r"[^=]*\S\s+=", o)]
    if spaced:  # the shell passed `train.lr =0.1` as one word: quoted, or from a script
        fixed = re.sub(r"\s+=\s*", "=", spaced[0].strip(), count=1)
        return f"{message}\n{spaced[0]!r} has a space before '=': type it without, {fixed}"
    if type(exc).__name__ == "OverrideParseException":  # Hydra's grammar, not the value
        return f"{message}\n{QUOTE_HINT}"
    if (key := re.search(r"Interpolation key '([A-Za-z_]\w*)' not found", text)) is not None:
        # `${HOME}/photos`, the shell's form, is an interpolation of Hydra's own here.
        return (
            f"{message}\n${{{key[1]}}} is Hydra's interpolation, not an environment variable:"
            f" write ${key[1]}, which params.yaml keeps as written and each machine's stage"
            " expands"
        )
    return message


def _full_width(overrides: list[str]) -> str | None:
    """What to type instead of the full-width characters of the first override holding any
    (＝ ， ０ and the full-width space, ‘’ quotes, 。), as an input method types them."""
    for override in overrides:
        typed = [c for c in override if _full_width_form(c)]
        if typed:
            fixed = "".join(
                IME_PUNCTUATION.get(c) or unicodedata.normalize("NFKC", c) for c in override
            )
            fixed = re.sub(r"\s*=\s*", "=", fixed.strip(), count=1)  # train.lr　=0.02
            shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in dict.fromkeys(typed))
            said = f"{override!r} holds characters an input method typed in full width: {shown}."
            half = f" Switch it to half-width (半角) or English punctuation: {fixed}"
            kept = _kept_path(override, fixed)
            if kept is None:
                return said + half
            if kept[1]:  # the path exists as typed: its name holds them
                return f"{said} The path exists so: quote it, {kept[0]}"
            return f"{said}{half}; or, if the path's own name holds them, quoted: {kept[0]}"
    return None


def _kept_path(override: str, fixed: str) -> tuple[str, bool] | None:
    """For a path whose own name may hold full-width characters (写真（２０２４）): the
    override keeping them, quoted, and whether that path exists; None for other keys, or where
    the half-width path is the one that exists."""
    key, _, value = fixed.partition("=")
    if key not in PATH_KEYS or value.startswith("["):  # a list's items are quoted one by one
        return None
    typed = re.split(r"\s*[=＝]\s*", override.strip(), maxsplit=1)[-1]
    typed = typed.strip("'\"‘’“”")  # the quotes around it are the typing's, not the path's
    half = value.strip("'\"")
    if typed == half or Path(half).expanduser().exists():
        return None
    quoted = f'"{typed}"' if "'" in typed else f"'{typed}'"
    return f"{key}={quoted}", Path(typed).expanduser().exists()


def _full_width_form(c: str) -> bool:
    """A full-width form of an ASCII character (U+FF01 to U+FF5E), the ideographic space, or
    the punctuation an input method types for ASCII's; not a half-width katakana or µ."""
    return c in IME_PUNCTUATION or c == "\u3000" or "\uff01" <= c <= "\uff5e"


def _override_error(exc: Exception) -> str:
    """The error for a failed composition. A misspelled key (`train.lrr=0.1`) gets Hydra's advice
    to add it with `+`, after which params.yaml refuses it as unknown: say so, with the keys that
    exist there."""
    match = re.match(r"Could not override '([^']+)'", str(exc))
    if match is None:  # any other error, a missing package's included, says what it is
        return str(exc)
    from visionpipe.config import MOVED
    from visionpipe.config.params import unknown_key

    unknown = unknown_key(match[1])
    if unknown is None:
        return str(exc)
    if match[1] in MOVED:  # not a misspelling: the line says where the key is now
        return unknown
    return f"{unknown} (a misspelling? `+{match[1]}=...` would add it, and params.yaml refuses it)"


def build_parser() -> argparse.ArgumentParser:
    # The docstring's first paragraph, not its first line: that one ends mid-sentence.
    summary = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(prog="visionpipe", description=summary)
    parser.add_argument("--version", action="version", version=f"visionpipe {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "predict",
        help="classify images, folders or globs",
        description="Classify images: one line per file on stdout (the table), logs on stderr.",
        epilog="Exit status: 0 when every input was predicted and every output written, 1 when "
        "any failed (the others are still predicted and written), 2 when the model or the "
        "arguments cannot be used, 141 when the reader of stdout stopped reading (`| head`).",
    )
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or globs")
    p.add_argument(
        "--model",
        type=_path,
        default=None,
        help=f"{paths.ONNX_MODEL} (onnx backend) or {paths.MODEL} (torch) by default, here or in "
        "the project this folder is inside",
    )
    p.add_argument(
        "--backend",
        choices=("onnx", "torch"),
        default="onnx",
        help="ONNX Runtime, or PyTorch for a .pt file (default onnx)",
    )
    p.add_argument("--topk", type=int, default=3, help="classes to show per image (default 3)")
    p.add_argument(
        "--batch-size", type=int, default=64, help="images in one model call (default 64)"
    )
    p.add_argument(
        "--json", type=_path, help="also write the predictions as JSON here ('-': stdout)"
    )
    p.add_argument("--csv", type=_path, help="also write the predictions as CSV here ('-': stdout)")
    p.add_argument(
        "--grid", type=_path, help="also write a labelled image grid here (.png, .jpg or .webp)"
    )
    p.set_defaults(func=_predict, parser=p)
    _add_serve(sub)
    c = sub.add_parser(
        "params",
        help="write params.yaml from conf/ (as `dvc exp run -S` does), e.g. after editing conf/",
        description="Write params.yaml from conf/ with these overrides, as `dvc exp run -S` "
        "does, and say which values changed; `dvc repro` then runs with them.",
        epilog="Exit status: 0 when params.yaml was written (or already held these values), 2 "
        "when an override or conf/ is invalid, 1 when params.yaml cannot be written.",
    )
    c.add_argument("overrides", nargs="*", help="key=value or recipe=NAME, as after -S")
    c.set_defaults(func=_params, parser=c)
    return parser


SERVE_EXIT = (
    "Exit status: 0 once stopped (Ctrl-C, SIGTERM: the requests in progress are answered first),"
    " 2 when the model or an option cannot be used or the address is taken, 128 + the signal's"
    " number when a second Ctrl-C or signal stops it at once."
)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "serve",
        help="answer predictions over HTTP, with a page to drop photos on",
        description="Answer predictions over HTTP (POST /predict), with a page to drop photos on"
        " (GET /); logs on stderr. docs/serving.md has the API.",
        epilog=SERVE_EXIT,
    )
    s.add_argument(
        "--model",
        type=_path,
        help=f"the ONNX model to serve (default {paths.ONNX_MODEL}, here or in the project above)",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port (default 8000)")
    s.add_argument("--topk", type=int, default=3, help="classes per image unless asked (default 3)")
    s.add_argument(
        "--max-batch", type=int, default=64, help="images in one model call, at most (default 64)"
    )
    s.add_argument(
        "--batch-wait-ms",
        type=float,
        default=0.0,
        help="how long a model call waits for more requests to join it (default 0)",
    )
    s.add_argument(
        "--max-upload-mb", type=float, default=10.0, help="request size limit (default 10 MiB)"
    )
    s.add_argument(
        "--read-timeout-s",
        type=float,
        default=30.0,
        help="the longest a request body may pause between bytes; then 408 (default 30)",
    )
    s.add_argument(
        "--keepalive-s",
        type=float,
        default=75.0,
        help="how long a connection may wait for its next request (default 75)",
    )
    s.add_argument(
        "--allow-origin",
        type=_origin,
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web page origin (http://localhost:3000) whose fetch() may read the answers; "
        "'*' for any; repeat for more (default: none but the server's own page)",
    )
    s.add_argument(
        "--allow-host",
        type=_host,
        action="append",
        default=[],
        metavar="NAME",
        help="a host name requests reaching a loopback address may call the server by (the "
        "name a reverse proxy on this machine passes on); '*' for any; repeat for more "
        "(default: localhost, this machine's name and addresses)",
    )
    s.set_defaults(func=_serve, parser=s)


DEFAULT_PORTS = {"http": 80, "https": 443}


def _path(value: str) -> Path:
    """A file argument; an empty one (`--json ""`, an unset shell variable) is refused: as a
    Path it would be ".", the current folder."""
    if not value:
        raise argparse.ArgumentTypeError("an empty name: give a file name")
    # A folder a Mac named "été" decomposed, typed composed: that folder, not a second one
    # looking the same. The file and folders below it may be new (an output's).
    return Path(fsutil.as_on_disk(value))


def _origin(value: str) -> str:
    """An --allow-origin value as browsers send it as Origin (scheme and host in lower case, IDN
    hosts in punycode, percent-escapes decoded, IPv6 compressed, no default port), or '*'."""
    if value == "*":
        return value
    if "*" in urllib.parse.unquote(value):  # no browser sends a pattern: it never matches
        raise argparse.ArgumentTypeError(
            f"{value!r}: an origin is one site; give each (--allow-origin https://a.example.com"
            " --allow-origin https://b.example.com), or '*' alone for any"
        )
    try:
        parts = urllib.parse.urlsplit(value)
        scheme = parts.scheme.lower()
        # A browser's Origin has no path, not even "/": "http://localhost:3000/" never matches.
        whole = value.lower() == f"{scheme}://{parts.netloc}".lower() and not parts.username
        host, port = _origin_host(parts.hostname or "", "[" in parts.netloc), parts.port
    except (ValueError, UnicodeError):  # a port above 65535, a host no browser would take
        scheme, whole = "", False
    if scheme in DEFAULT_PORTS and whole:
        return f"{scheme}://{host}" + ("" if port in (None, DEFAULT_PORTS[scheme]) else f":{port}")
    raise argparse.ArgumentTypeError(
        f"{value!r} is not an origin: give scheme://host[:port] with no path or trailing "
        "slash, as the browser's address bar shows the page's site (http://localhost:3000), "
        "or '*' for any"
    )


def _host(value: str) -> str:
    """An --allow-host value as a Host header names it (lower case, IDN in punycode), or '*'."""
    if value == "*":
        return value
    wild = "*." if value.startswith("*.") else "." if value.startswith(".") else ""
    if "*" in value.removeprefix(wild):  # *example.com, *.*.example.com: no such pattern
        raise argparse.ArgumentTypeError(
            f"{value!r}: a * stands only for any name (*) or before a domain's dot "
            "(*.example.com, as .example.com)"
        )
    try:  # a domain's subdomains as Django and Vite write them (.example.com), or *.example.com
        return wild + _origin_host(value.removeprefix(wild).rstrip("."), False)
    except (ValueError, UnicodeError):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a host name: give the name alone (example.com), without a "
            "scheme, port or path; .example.com for it and its subdomains; or '*' for any"
        ) from None


# What the URL standard refuses in a domain once its percent-escapes are decoded.
FORBIDDEN_IN_HOST = frozenset(" #%/:<>?@[\\]^|")


def _origin_host(host: str, bracketed: bool) -> str:
    """A URL's host (urlsplit's, in lower case) as browsers write it in Origin; ValueError or
    UnicodeError for one a browser refuses."""
    if bracketed:  # an IPv6 address: [::ffff:7f00:1] for [::FFFF:127.0.0.1]
        return f"[{_ipv6_text(host)}]"
    host = urllib.parse.unquote(host).lower()
    if not host or any(c in FORBIDDEN_IN_HOST or ord(c) < 0x20 or c == "\x7f" for c in host):
        raise ValueError(host)
    if host.isascii():
        # Only in lower case: IDNA refuses a Docker service's name (web_app).
        return host
    import idna  # here: other commands never need it

    # UTS-46, as browsers (the URL standard) map a host: straße.de is xn--strae-oqa.de.
    return idna.encode(host, uts46=True).decode("ascii")


def _ipv6_text(text: str) -> str:
    """An IPv6 address as the URL standard serialises it: hex pieces in lower case, the first
    longest run of two or more zero pieces as "::", no dotted IPv4 tail, no zone."""
    import ipaddress

    address = ipaddress.IPv6Address(text)
    if address.scope_id is not None:
        raise ValueError(text)  # browsers take no zone (fe80::1%eth0) in a URL
    pieces = [int(p, 16) for p in address.exploded.split(":")]
    best, best_len, run = -1, 1, 0
    for i, piece in enumerate(pieces):
        run = run + 1 if piece == 0 else 0
        if run > best_len:
            best, best_len = i - run + 1, run
    hexes = [f"{p:x}" for p in pieces]
    if best < 0:
        return ":".join(hexes)
    return ":".join(hexes[:best]) + "::" + ":".join(hexes[best + best_len :])


GRID_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # formats every Pillow build writes
# Workbook formats: --csv writes text, which their readers (pd.read_excel) refuse.
SPREADSHEET_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")


# Names of standard output itself, as a file: what `-` is to --json and --csv.
STDOUT_NAMES = frozenset({"/dev/stdout", "/dev/fd/1", "/proc/self/fd/1"})


def _check_outputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """predict's output files: one of them at most on stdout, a grid in a format its name says,
    no two naming one file, and no JSON or CSV named like a photo."""
    flags = [f for f in ("json", "csv", "grid") if getattr(args, f, None) is not None]
    on_stdout = [f for f in flags if _goes_to_stdout(getattr(args, f))]
    if len(on_stdout) > 1:
        both = " and ".join(f"--{f} {getattr(args, f)}" for f in on_stdout)
        parser.error(f"{both} both ask for stdout: send one of them to a file")
    named: dict[str, str] = {}
    for flag in ("json", "csv", "grid"):
        path = getattr(args, flag, None)
        if path is None or path == Path("-"):
            continue
        from visionpipe.images import is_image_name  # here: other commands never need Pillow

        if flag != "grid" and is_image_name(path.name):  # it would replace a photo
            parser.error(f"--{flag} {path} is named like an image: give a .{flag} file name")
        if flag == "csv" and path.suffix.lower() in SPREADSHEET_SUFFIXES:
            parser.error(
                f"--csv {path}: the file is CSV text, which a spreadsheet opens (and a"
                f" {path.suffix} reader refuses): name it {path.with_suffix('.csv')}"
            )
        if (meant := paths.meant_here(str(path))) is not None:  # not one file named so
            parser.error(f"--{flag} {path} is a Windows path; here, write {meant}")
        if streams.discarded(path):  # as many outputs as asked may be dropped
            continue
        if (other := named.get(os.path.realpath(path))) is not None:  # the last would win
            parser.error(f"--{other} and --{flag} both name {path}: give each its own file")
        named[os.path.realpath(path)] = flag
    grid = getattr(args, "grid", None)
    discarded = grid is not None and streams.discarded(grid)
    if grid is not None and not discarded and grid.suffix.lower() not in GRID_SUFFIXES:
        parser.error(
            f"--grid {grid}: name a {', '.join(GRID_SUFFIXES)} file (the image's format "
            "follows its name)"
        )


def _goes_to_stdout(path: Path) -> bool:
    """`-`, /dev/stdout, or the very file `>` sent standard output to."""
    return path == Path("-") or str(path) in STDOUT_NAMES or streams.standard_stream(path) == 1


def _check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for flag in ("topk", "batch_size", "max_batch"):
        if getattr(args, flag, 1) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    # nan and inf pass a plain comparison: a wait of either hangs every request, and an upload
    # limit of either cannot become a byte count.
    wait = getattr(args, "batch_wait_ms", 0.0)
    if not (math.isfinite(wait) and wait >= 0):
        parser.error(f"--batch-wait-ms must be a number of 0 or more, not {wait:g}")
    upload = getattr(args, "max_upload_mb", 1.0)
    if not (math.isfinite(upload) and upload > 0):
        parser.error(f"--max-upload-mb must be a number above 0, not {upload:g}")
    for flag in ("read_timeout_s", "keepalive_s"):
        if not getattr(args, flag, 1) > 0:  # nan too
            parser.error(f"--{flag.replace('_', '-')} must be above 0, not {getattr(args, flag):g}")
    if not 0 <= getattr(args, "port", 0) <= 65535:
        parser.error(f"--port must be from 0 to 65535, not {args.port}")


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`argv` parsed; a file named like an option (`-1.jpg`), which argparse takes for one, gets
    the hint GNU tools give after argparse's error."""
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # the command's usage, not the top one's (argparse's own would show that)
            before = argv[: argv.index(args.command)] if args.command in argv else []
            command = parser if extra[0] in before else getattr(args, "parser", parser)
            command.error(f"unrecognized arguments: {' '.join(extra)}{_set_flag_hint(args, extra)}")
        return args
    except SystemExit as exc:
        dashed = [a for a in argv if a.startswith("-") and len(a) > 1 and Path(a).exists()]
        if exc.code == 2 and dashed:
            print(
                f"visionpipe: {dashed[0]!r} is read as an option; to name the file, write"
                f" ./{dashed[0]} or put -- before the file names",
                file=sys.stderr,
            )
        elif exc.code == 2 and (hint := _option_first_hint(parser, argv) or _photo_as_model(argv)):
            print(f"visionpipe: {hint}", file=sys.stderr)
        raise


def _option_first_hint(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """For `visionpipe --topk 3 predict x`: a command's options come after the command, and
    argparse only says "invalid choice: '3'". Only where the command has those options."""
    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    at = next((i for i, arg in enumerate(argv) if arg in commands), None)
    if not at or not argv[0].startswith("-") or "--" in argv[:at]:
        return ""
    known = commands[argv[at]]._option_string_actions

    def its_own(arg: str) -> bool:  # as argparse takes it: a long option by a prefix of one
        name = arg.split("=")[0]
        prefixed = [k for k in known if k.startswith(name)] if name.startswith("--") else []
        return name in known or len(prefixed) == 1

    # Values look like options too: `-` (stdout), a negative number.
    if any(re.fullmatch(r"--?[A-Za-z].*", a) and not its_own(a) for a in argv[:at]):
        return ""
    moved = [argv[at], *argv[:at], *argv[at + 1 :]]
    return "a command's options come after it: uv run visionpipe " + " ".join(
        map(_shell_word, moved)
    )


def _set_flag_hint(args: argparse.Namespace, extra: list[str]) -> str:
    """For `visionpipe params -S train.lr=0.1`, DVC's flag typed out of habit: the way without."""
    if getattr(args, "command", None) != "params":
        return ""
    given, flagged = list(getattr(args, "overrides", [])), False
    for arg in extra:  # -S k=v, -Sk=v, --set-param k=v, --set-param=k=v; other options left out
        joined = re.match(r"(?:-S|--set-param=|--set=)([+~]{0,2}\w.*)", arg)  # ++k=v, ~k
        flagged |= arg in ("-S", "--set-param", "--set") or joined is not None
        given += [joined[1]] if joined else [] if arg.startswith("-") else [arg]
    if not flagged:
        return ""
    typed = " ".join(_shell_word(a) for a in given) or "train.lr=0.1"
    return f" (the overrides come alone: visionpipe params {typed})"


def _shell_word(arg: str) -> str:
    """`arg` as the shell takes it back whole: Hydra's single quotes inside double ones, as the
    docs write them ("data.source='/home/me/照片'"), else shlex's quoting."""
    if "'" in arg and not re.search(r'["$`\\!]', arg):
        return f'"{arg}"'
    return shlex.quote(arg)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = _parse(parser, sys.argv[1:] if argv is None else argv)
    args.argv = sys.argv[1:] if argv is None else argv  # as typed, for hints that repeat it
    _check_numbers(args.parser, args)  # the command's parser: its usage, not the top one's
    _check_outputs(args.parser, args)
    logs.setup(logging.WARNING)
    try:
        with logs.stops_on_signals():  # serve handles these itself once it listens
            code = args.func(args)
            _flush_stdout()
            return code
    except KeyboardInterrupt as exc:  # a folder of photos takes a while: Ctrl-C is no bug
        text, code = logs.stop_text(exc)
        print(text, file=sys.stderr)
        logs.stop_said()
        return code
    except BrokenPipeError:  # `| head -1`: the reader has all it wants
        return logs.stdout_gone()
    except fsutil.DiskFullError as exc:  # --json, --csv, --grid: the message names the file
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # `visionpipe params` in a read-only or another user's project
        refused = fsutil.refused_cause(exc)
        if refused is None:
            raise
        print(f"error: {fsutil.refused_message(refused)}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # the wheel alone: no torch, DVC or Hydra
        print(f"error: {_lean_install_hint(args, exc)}", file=sys.stderr)
        return 1


def _flush_stdout() -> None:
    """Flush what print() holds for stdout, where its failure can still be told: at exit,
    Python would only print "Exception ignored" and exit 120."""
    if sys.stdout is not None:
        with streams.stdout_writes():
            sys.stdout.flush()


def _lean_install_hint(args: argparse.Namespace, exc: ModuleNotFoundError) -> str:
    """Why a command of a predict-and-serve install (the wheel, without the pipeline's packages)
    stopped, and where it runs."""
    command = "predict --backend torch" if getattr(args, "backend", "") == "torch" else args.command
    return (
        f"visionpipe {command} needs the package {exc.name!r}, which this install lacks: an "
        "install of visionpipe alone predicts and serves with an ONNX export (--model "
        f"{paths.ONNX_MODEL}); {command} runs in the project, whose `uv sync --locked` installs "
        "the pipeline's packages (PyTorch, DVC, Hydra)"
    )


if __name__ == "__main__":
    sys.exit(main())
