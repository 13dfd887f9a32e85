#!/usr/bin/env bash
# Refresh the vendored vega, vega-lite and vega-embed builds from the npm registry, then
# regenerate template.html from them. Needs npm and python3; run from anywhere:
#
#     bash plots_template/update_vendor.sh
#
# To upgrade, change a version below, run this, and commit vendor/ and template.html together.
set -euo pipefail

# Same major lines as the CDN links in dvc-render's default page (vega@5.20.2, vega-lite@5.2.0,
# vega-embed@6.18.2): dvc-render's templates are vega-lite v5 specs, and vega-lite 6 needs vega 6.
VEGA=5.33.1
VEGA_LITE=5.23.0
VEGA_EMBED=6.29.0

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# fetch NAME VERSION: copy build/NAME.min.js, package.json and LICENSE into vendor/NAME/.
fetch() {
    local name=$1 version=$2
    local pkg="$work/$name/package" dest="$here/vendor/$name"
    # npm pack checks the tarball against the registry's integrity hash.
    (cd "$work" && npm pack --silent "$name@$version" >/dev/null)
    mkdir -p "$work/$name" "$dest"
    tar -xzf "$work/$name-$version.tgz" -C "$work/$name"
    cp "$pkg/build/$name.min.js" "$pkg/package.json" "$dest/"
    if [[ -f "$pkg/LICENSE" ]]; then
        cp "$pkg/LICENSE" "$dest/LICENSE"
    elif [[ ! -f "$dest/LICENSE" ]]; then
        # The vega package ships no LICENSE of its own; ours is the vega/vega repository's.
        echo "error: $name@$version ships no LICENSE and $dest/LICENSE is missing;" \
            "copy LICENSE from the $name source repository there" >&2
        exit 1
    fi
    echo "vendored $name@$version"
}

fetch vega "$VEGA"
fetch vega-lite "$VEGA_LITE"
fetch vega-embed "$VEGA_EMBED"

python3 "$here/build_template.py"
