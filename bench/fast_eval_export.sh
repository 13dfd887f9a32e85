#!/usr/bin/env bash
# The evaluate and export stages of the `fast` recipe (TTA 2: six views of every test image),
# an old revision's code against this checkout's, on the same model and the same test split,
# taking turns (old, new; old, new), as wall seconds per stage.
#
#   bench/fast_eval_export.sh PROJECT OLD_REV OLD_PYTHON [ROUNDS]
#
# PROJECT: a project whose workspace holds a `fast` run (e.g. `dvc exp run -S recipe=fast
# -S train.epochs=1`), with this checkout's src/ and stages/. The old revision's stages run in a
# sibling folder (a git + DVC repo, like a user's) that links PROJECT's data/processed, copies
# models/model.pt, and has PROJECT's params.yaml less the keys the old revision does not know.
# OLD_PYTHON: the python of the old revision's own install.
set -euo pipefail
project=$(realpath "$1") old_rev=$2 old_python=$3 rounds=${4:-2}
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d /tmp/fast-eval-export.XXXX)
git -C "$repo" archive "$old_rev" src stages | tar -x -C "$work"
mkdir -p "$work/project/models" "$work/project/data"
ln -s "$project/data/processed" "$work/project/data/processed"
cp "$project/models/model.pt" "$work/project/models/"
"$old_python" - "$project/params.yaml" "$work/project/params.yaml" <<'EOF'
import sys, yaml
params = yaml.safe_load(open(sys.argv[1]))
params["export"].pop("portable", None)
params.pop("evaluate", None)
params["launch"].pop("data_root", None)
open(sys.argv[2], "w").write(yaml.safe_dump(params, sort_keys=False))
EOF
(cd "$work/project" && git init -q && "$old_python" -m dvc init -q && git add -A &&
  git -c user.name=bench -c user.email=bench@example.invalid commit -qm project)
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores;" \
  "old $old_rev, new $(git -C "$repo" rev-parse --short HEAD); $(date -u '+%F %H:%M UTC')"
for round in $(seq "$rounds"); do
  for who in old new; do
    for stage in evaluate export; do
      if [ "$who" = old ]; then
        cd "$work/project"
        cmd=(env "PYTHONPATH=$work/src" "$old_python" "$work/stages/$stage.py")
      else
        cd "$project"
        cmd=(env PYTHONPATH=src python -m visionpipe.warm "stages/$stage.py")
      fi
      start=$(date +%s.%N)
      "${cmd[@]}" > "$work/$who-$stage.log" 2>&1
      end=$(date +%s.%N)
      echo "round $round $who $stage $(python3 -c "print(f'{$end - $start:.1f}')") s"
    done
    echo "  $who test metrics: $(tr -d ' \n' < dvclive/eval/metrics.json)"
  done
done
rm -rf "$work"
