"""Build template.html: DVC's plots page with vega, vega-lite and vega-embed inlined.

`dvc plots show` and `dvc plots diff` fill dvc-render's page, whose `{scripts}` placeholder
becomes <script src> tags pointing at a CDN, so offline the page draws nothing. This template
has no `{scripts}` placeholder (dvc-render then drops those tags) and carries the vendored
builds from vendor/ inline instead: a page with no external files works in whatever folder DVC
writes it to (`dvc_plots/`, `dvc plots diff -o elsewhere/`). DVC uses it through
`plots.html_template` in .dvc/config.

    python3 plots_template/build_template.py          # rewrite template.html from vendor/
    python3 plots_template/build_template.py --check  # exit 1 if template.html is stale

vendor/ itself is refreshed from the npm registry by update_vendor.sh.
"""

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENDOR = HERE / "vendor"
TEMPLATE = HERE / "template.html"

# Load order matters: vega-lite needs vega, vega-embed needs both.
PACKAGES = ("vega", "vega-lite", "vega-embed")

# dvc-render fills these by plain str.replace over the whole page, inlined scripts included.
DVC_PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")

# The .map files are not vendored; a dangling reference only makes devtools complain.
SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.MULTILINE)

# Same page as dvc-render's default (dvc_render/html.py) but with the scripts inline and an
# explicit charset: the builds contain non-ASCII text and a file:// page has no HTTP header.
PAGE_HEAD = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
"""
PAGE_TAIL = """    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def inline_script(name: str) -> str:
    """One package's minified build as a <script> element, headed by its licence."""
    folder = VENDOR / name
    version = json.loads((folder / "package.json").read_text(encoding="utf-8"))["version"]
    licence = (folder / "LICENSE").read_text(encoding="utf-8").strip()
    code = SOURCE_MAP.sub("", (folder / f"{name}.min.js").read_text(encoding="utf-8")).strip()

    # These would end the <script> element (or the licence comment) early, or be rewritten
    # by dvc-render; none occurs in the pinned builds, so refuse rather than escape.
    text = f"{licence}\n{code}".lower()
    bad = [s for s in ("</script", "<!--", *DVC_PLACEHOLDERS) if s in text]
    bad += ["*/"] if "*/" in licence else []
    if bad:
        raise SystemExit(
            f"{name}@{version} contains {', '.join(map(repr, bad))}, which cannot be inlined "
            f"into {TEMPLATE.name} as is; escape it in build_template.py"
        )

    header = f"/*! {name} {version} | BSD-3-Clause | plots_template/vendor/{name}/LICENSE\n"
    return f"    <script>\n{header}{licence}\n*/\n{code}\n    </script>\n"


def build() -> str:
    return PAGE_HEAD + "".join(inline_script(name) for name in PACKAGES) + PAGE_TAIL


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if template.html differs from vendor/"
    )
    args = parser.parse_args()

    page = build()
    if args.check:
        current = TEMPLATE.read_text(encoding="utf-8") if TEMPLATE.exists() else ""
        if current != page:
            sys.exit(
                f"{TEMPLATE} is out of date with {VENDOR}; "
                "run 'python3 plots_template/build_template.py' and commit it"
            )
        return
    TEMPLATE.write_text(page, encoding="utf-8")
    print(f"wrote {TEMPLATE} ({len(page) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
