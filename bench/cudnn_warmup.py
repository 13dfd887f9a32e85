"""What cuDNN's autotuning (`torch.backends.cudnn.benchmark`) and strict fp32 scoring cost on a GPU.

One configuration per process (autotuning results are cached per process): RECIPE's model and
train settings (conf/recipe/RECIPE.yaml) on random uint8 CIFAR-sized data already on the GPU,
`train.train_epoch` for 4 epochs, each followed by scoring 10,000 images with
`inference.predict_logits` (strict fp32, or with TF32 allowed). Prints one JSON line: seconds per
epoch and per scoring pass, the first of each including whatever tuning it triggers.

    for cfg in "fast 1 1" "fast 0 1" "fast 1 0" "fast 0 0" "tutorial 1 1" "tutorial 0 1"; do
        PYTHONPATH=src python bench/cudnn_warmup.py $cfg   # RECIPE BENCHMARK(0/1) STRICT(0/1)
    done

Figures (H100) and the decision they led to: bench/RESULTS.md, section cudnn_warmup_cuda.
"""

import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from visionpipe import distributed, inference, precision, train
from visionpipe.config.compose import compose
from visionpipe.config.params import parse_params
from visionpipe.models import arch_params, build_model

REPO_ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    recipe, bench, strict = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1"
    torch.backends.cudnn.benchmark = bench
    if not strict:
        precision.strict_fp32 = lambda device: contextlib.nullcontext()
    dev = torch.device("cuda")
    composed = compose([f"recipe={recipe}"], REPO_ROOT / "conf")
    composed["data"]["source"] = "unused"
    params = parse_params(composed)
    g = torch.Generator().manual_seed(0)
    n = 50000 if recipe == "fast" else 45000
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    val = torch.randint(0, 256, (10000, 3, 32, 32), dtype=torch.uint8, generator=g)
    m = params.model
    mean, std = ([0.5] * 3, [0.25] * 3) if m.normalize else (None, None)
    model = build_model(m.name, 10, 32, arch_params(m), mean, std)
    model.prepare(x)
    model = train.place_model(model, dev, params.train)
    loop = train.make_loop(model, x.to(dev), y.to(dev), params.train, dev, distributed.Dist())
    out: dict = {"recipe": recipe, "benchmark": bench, "strict_val": strict, "val": []}
    epochs = []
    for e in range(4):
        torch.cuda.synchronize()
        t = time.perf_counter()
        train.train_epoch(loop, e).item()
        torch.cuda.synchronize()
        epochs.append(round(time.perf_counter() - t, 3))
        t = time.perf_counter()
        inference.predict_logits(model, val, dev, params.train.batch_size)
        out["val"].append(round(time.perf_counter() - t, 3))
    out["epochs"] = epochs
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
