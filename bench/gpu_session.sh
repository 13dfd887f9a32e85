#!/usr/bin/env bash
# What to run on a machine with a CUDA GPU (CI and our dev hosts have none): the real-GPU tests,
# then the GPU benchmarks, each of which publishes a section of its own (`*_cuda`) in
# bench/RESULTS.md and bench/results/, next to the CPU host's figures.
#
#   bench/gpu_session.sh ZIP [OLD_CHECKOUT] [PART...]
#
# ZIP: cifar10-jpeg.zip. OLD_CHECKOUT: a checkout of the commit the `fast` speed-up is measured
# against (bench/fast_train.py --old); "-" skips that benchmark. PARTs (default: all): tests,
# repro (the whole pipeline by `dvc repro`, as the README's quick start, in a fresh git + DVC
# repo), recipes, loop, fast, airbench (bench/airbench_side.py: airbench94 and `fast` side by
# side; airbench 0.1.8 must be importable: `pip install --no-index --find-links WHEELS airbench`),
# stages (bench/stage_times.py: each stage's wall time in `dvc exp run` with the fast recipe).
# PYTHON (default `uv run python`) is the interpreter; LOGS (default bench/gpu-logs) where each
# part's output goes. On a machine with no package index, bench/gpu_carry.sh packs .carry/ first:
# the wheels are installed into PYTHON's environment here, and ZIP may be its .tar.gz.
# With OUT set (the device tool's folder of files that come back), each part's log, RESULTS.md
# and results/ are copied there as soon as the part ends, so a call cut off by its time limit
# still returns what the finished parts measured.
# A session's device time is short (15 minutes, the machine's start included), so the parts are
# sized for it; estimates on one H100, from the step times measured there and the CPU runs:
# airbench ~5 min (3 seeds of airbench94, `fast` and `fast` with train.cuda_graph;
# AIRBENCH_EXTRA="--compiled --also train.compile=true" adds the compiled variants, each compiling
# once per process: ~5 min more), loop ~1.5 min, tests ~3 min (TESTS=tests/unit/test_cuda.py
# alone: ~1 min), stages ~3 min, repro ~1.5 min, recipes ~2 min. First call, most valuable part
# first: `airbench loop tests`; a call cut off at its limit still returns the finished parts.
set -uo pipefail
zip=$(realpath "${1:?give the CIFAR-10 JPEG zip}") || exit 1
old=${2:--}
shift $(($# < 2 ? $# : 2))
parts=${*:-tests repro recipes loop fast airbench stages}
read -r -a py <<<"${PYTHON:-uv run python}"
# The GPU image's Python has not installed this project: every part imports it from src/ (the
# benchmarks' own subprocesses name the checkout they run).
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
logs=${LOGS:-bench/gpu-logs}
mkdir -p "$logs"
status=0

# dvc.yaml's stages run `python`, and the repro part `dvc`: on the GPU image (PYTHON=python3)
# neither name need be on PATH, nor be that interpreter, so both point at PYTHON's here.
if [[ -n ${PYTHON:-} ]]; then
    exe=$("${py[@]}" -c 'import sys; print(sys.executable)') || exit 1
    shims=$(mktemp -d)
    printf '#!/bin/sh\nexec "%s" "$@"\n' "$exe" >"$shims/python"
    printf '#!/bin/sh\nexec "%s" -m dvc "$@"\n' "$exe" >"$shims/dvc"
    chmod +x "$shims/python" "$shims/dvc"
    export PATH=$shims:$PATH
fi
if [[ -d .carry/whl ]]; then
    "${py[@]}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .carry/whl/*.whl ||
        exit 1
fi
if [[ $zip == *.tar.gz ]]; then # the benchmarks take a zip: the same files, uncompressed
    packed=$zip
    zip=$(mktemp -d)/$(basename "${packed%.tar.gz}").zip
    "${py[@]}" - "$packed" "$zip" <<'EOF' || exit 1
import sys, tarfile, zipfile
with tarfile.open(sys.argv[1]) as tar, zipfile.ZipFile(sys.argv[2], "w") as z:
    for member in tar:
        if member.isfile():
            z.writestr(member.name, tar.extractfile(member).read())
EOF
fi

repro() {  # the quick start on the GPU: fresh git + DVC repo, local data, dvc repro
    local work
    work=$(mktemp -d) || return 1
    cp -r dvc.yaml params.yaml conf stages src plots_template pyproject.toml "$work" || return 1
    cd "$work" || return 1
    mkdir -p conf/local && printf 'data:\n  source: %s\n' "$zip" >conf/local/machine.yaml
    git init -q && git add -A && git -c user.name=gpu -c user.email=gpu@localhost commit -qm init
    dvc init -q && PYTHONPATH=src "${py[@]}" -m visionpipe.cli params && dvc repro &&
        dvc metrics show && cat metrics/timings/train.json
}

run() {  # run NAME COMMAND...: its output to $logs/NAME.log and the screen; remember a failure
    local name=$1
    shift
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" 2>&1 | tee "$logs/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s"
    ((rc == 0)) || status=1
    if [[ -n ${OUT:-} ]]; then
        mkdir -p "$OUT/bench" && cp -r "$logs" bench/RESULTS.md bench/results "$OUT/bench/"
    fi
}

# REHEARSE=1 runs the parts on a machine without a GPU (a tiny ZIP; `airbench`, `loop` and
# `stages` then run on the CPU at tiny sizes and write nothing), so that the session's minutes on
# the GPU are not spent finding a broken install or script.
[[ ${REHEARSE:-} == 1 ]] ||
    "${py[@]}" -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(0))' || exit 1
for part in $parts; do
    case $part in
    tests)
        run tests "${py[@]}" -m pytest -q -p no:cacheprovider ${TESTS:-tests/unit/test_cuda.py \
            tests/unit/test_gpu_paths.py tests/unit/test_steps.py tests/unit/test_train.py tests/unit/test_evaluate.py tests/unit/test_export.py}
        ;;
    repro) run repro repro ;;
    recipes) run recipes "${py[@]}" bench/recipes.py tutorial fast --zip "$zip" ;;
    loop)
        sizes=(--devices cuda --images 20000 --repeats 3)
        [[ ${REHEARSE:-} == 1 ]] && sizes=(--devices cpu --images 640 --repeats 1 --no-write)
        run loop "${py[@]}" bench/train_loop.py --zip "$zip" "${sizes[@]}"
        ;;
    fast)
        [[ $old == - ]] || run fast "${py[@]}" bench/fast_train.py --old "$old" --zip "$zip" \
            --seeds 0,1,2 --old-seeds 0,1
        ;;
    airbench)
        sizes=(--seeds 0,1,2)
        [[ ${REHEARSE:-} == 1 ]] && sizes=(--seeds 0 --epochs 1 --airbench-epochs 0.05
            --test-images 100 --cpu-shim --no-write)
        # shellcheck disable=SC2086 # AIRBENCH_EXTRA is a list of arguments
        run airbench "${py[@]}" bench/airbench_side.py --zip "$zip" "${sizes[@]}" \
            --also train.cuda_graph=true ${AIRBENCH_EXTRA:-}
        ;;
    stages) # each stage's share of `dvc exp run -S train.lr=X` with the fast recipe
        sizes=(--epochs 10 --repeats 2)
        [[ ${REHEARSE:-} == 1 ]] && sizes=(--epochs 1 --repeats 1 --no-write)
        run stages "${py[@]}" bench/stage_times.py --new . --recipe fast "${sizes[@]}" --zip "$zip"
        ;;
    *) echo "unknown part $part (tests, repro, recipes, loop, fast, airbench, stages)" >&2 && status=1 ;;
    esac
done
exit $status
