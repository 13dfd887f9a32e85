#!/usr/bin/env bash
# Packs, on a machine that reaches PyPI, what bench/gpu_session.sh needs on a GPU machine that has
# its own Python and PyTorch but no package index, into .carry/ (git-ignored) to travel with the
# checkout:
#   .carry/whl/                   wheels of every locked dependency the GPU image lacks, built
#                                 for its Python (3.12, x86-64 Linux), and airbench 0.1.8 for
#                                 bench/airbench_side.py
#   .carry/cifar10-jpeg.tar.gz    the CIFAR-10 JPEG copy, repacked: one gzip stream over the tar
#                                 shares the 60,000 files' identical JPEG headers (about 19 MB,
#                                 where the zip, each file compressed alone, is 61 MB)
# and checks that the checkout and .carry/ together fit what the device tool sends (64 MiB).
#
#   bench/gpu_carry.sh [ZIP]      (ZIP: default ../shared/datasets/cifar10-jpeg.zip)
#
# On the GPU machine: bench/gpu_session.sh .carry/cifar10-jpeg.tar.gz [OLD] [PART...] installs
# the wheels, then runs.
set -euo pipefail
zip=${1:-../shared/datasets/cifar10-jpeg.zip}
carry=.carry
# The GPU image's own packages (the device tool's KINDS.md lists them): carried wheels would
# replace its builds, torch's above all.
image_has="torch torchvision triton numpy pillow onnx onnx-ir onnxruntime onnxscript tensorboard
tensorboard-data-server aiohttp aiohappyeyeballs aiosignal attrs frozenlist multidict propcache
yarl pyyaml requests urllib3 idna certifi charset-normalizer tqdm rich pygments markdown-it-py
mdurl psutil networkx fsspec filelock jinja2 markupsafe packaging pathspec tabulate typer click
shellingham typing-extensions protobuf grpcio absl-py markdown werkzeug six python-dateutil
sympy mpmath setuptools wheel pip colorama ml-dtypes pytest pytest-xdist execnet iniconfig
pluggy sortedcontainers anyio h11 httpcore httpx zipp xxhash flatbuffers pyparsing"
# Published as source only; both are pure Python, so a wheel built here runs there.
sdist_only="antlr4-python3-runtime airbench"
platforms=(manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64
    manylinux_2_31_x86_64 manylinux_2_34_x86_64)

rm -rf "$carry/whl" && mkdir -p "$carry/whl"
skip=" $(echo $image_has $sdist_only) pywin32 "
uv export --locked --no-hashes --no-emit-project --no-dev --format requirements-txt |
    grep -E '^[A-Za-z0-9]' | while read -r req _; do
    name=${req%%==*}
    [[ $skip == *" ${name,,} "* || $name == nvidia-* || $name == cuda-* ]] || echo "$req"
done >"$carry/requirements.txt"
python3 -m pip download -q --no-deps --only-binary=:all: --implementation cp \
    --python-version 3.12 ${platforms[@]/#/--platform } -d "$carry/whl" -r "$carry/requirements.txt"
lock_version() { grep -A1 "^name = \"$1\"$" uv.lock | sed -n 's/^version = "\(.*\)"$/\1/p'; }
python3 -m pip wheel -q --no-deps -w "$carry/whl" "antlr4-python3-runtime==$(lock_version antlr4-python3-runtime)" \
    airbench==0.1.8

python3 - "$zip" "$carry/cifar10-jpeg.tar.gz" <<'EOF'
# The zip's files in its (sorted) order, with its names and no owners or times: gzip -9.
import sys, tarfile, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, tarfile.open(sys.argv[2], "w:gz", compresslevel=9) as tar:
    for info in z.infolist():
        if not info.is_dir():
            member = tarfile.TarInfo(info.filename)
            member.size, member.mode = info.file_size, 0o644
            with z.open(info) as data:
                tar.addfile(member, data)
EOF

sends=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
packed=$(du -sb "$carry" | cut -f1)
echo "$(ls "$carry/whl" | wc -l) wheels; .carry/ $((packed / 1048576)) MiB + checkout $((sends / 1048576)) MiB"
((packed + sends < 64 * 1048576)) || { echo "over the device tool's 64 MiB" >&2 && exit 1; }
