"""Train-loop images/s: this pipeline's loop vs the tutorial's (the seeds') loop, side by side.

Both train the tutorial's CIFAR-10 CNN (visionpipe.models.tutorial_cnn(10, 32), same initial
weights) with SGD lr 0.01, batch 64, on the same real CIFAR-10 images, on the same machine, in one
run. Each timed pass is one epoch over --images images; the loops alternate for --repeats passes
and the medians are compared.

- seeds: a torchvision-CIFAR10-style Dataset (uint8 HWC arrays, Image.fromarray + ToTensor per
  item), DataLoader(batch_size=64, shuffle=True, num_workers=0), NCHW fp32 model, the tutorial's
  zero_grad / backward / step with loss.item() every step; batches moved to the device per step.
- pipeline: visionpipe.train's own epoch loop (`make_loop` + `train_epoch`, what train.run calls)
  with the default TrainConfig (no augmentation): uint8 NCHW tensor on the device, randperm
  slices, .float().div_(255), channels_last model and input, bf16 autocast where it is faster
  (CUDA; CPUs with AMX, AMD's with AVX512-BF16), LambdaLR step, loss summed on the device and
  read at the epoch's end and every log_every steps. Not timed: TensorBoard, tqdm, validation,
  checkpoints.

Like the train stage (`train.run`), the script first has glibc's malloc reuse freed memory
(`memory.keep_freed_memory`); it is one process, so the seeds' loop gets that too.

    uv run python bench/train_loop.py --images 10000
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from benchlib import (
    DEFAULT_CIFAR_ZIP,
    announce_machine,
    busy_note,
    load_cifar_jpegs,
    machine_line,
    result_name,
    summarize,
    update_results_md,
    write_json_result,
)
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from torchvision import transforms

from visionpipe import memory, precision, train
from visionpipe.config.train import TrainConfig
from visionpipe.models import build_model, tutorial_cnn

NAME = "train_loop"
TARGETS = {"cpu": 3.0, "cuda": 10.0}  # pipeline/seeds images/s ratio we aim for


class SeedsCIFAR(Dataset):
    """What torchvision.datasets.CIFAR10 does per item: uint8 HWC array -> PIL -> ToTensor."""

    def __init__(self, data: np.ndarray, targets: list[int]) -> None:
        self.data = data  # (N, 32, 32, 3) uint8, as CIFAR10.data
        self.targets = targets
        self.transform = transforms.ToTensor()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.data[index])
        return self.transform(img), self.targets[index]


def seeds_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    max_steps: int | None = None,
) -> float:
    """The tutorial's train loop for one epoch; mean loss of the steps run."""
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, steps = 0.0, 0
    for imgs, targets in loader:
        imgs, targets = imgs.to(device), targets.to(device)
        outputs = model(imgs)
        loss = loss_fn(outputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
        steps += 1
        if max_steps is not None and steps >= max_steps:
            break
    return total / steps


class Pipeline:
    """visionpipe.train's own loop: `make_loop` once (untimed), then `train_epoch` per pass."""

    def __init__(
        self,
        init: nn.Module,
        train_x: torch.Tensor,
        train_y: torch.Tensor,
        cfg: TrainConfig,
        device: torch.device,
    ) -> None:
        model = build_model("tutorial_cnn", 10, 32)
        model.net.load_state_dict(init.state_dict())
        # train_x/train_y are already on the device, as train.run puts them.
        model = train.place_model(model, device, cfg)  # device and memory format, as train.run
        self.loop = train.make_loop(model, train_x, train_y, cfg, device)
        self.epochs_done = 0

    def epoch(self, max_steps: int | None = None) -> float:
        loop = self.loop
        steps = (
            loop.batches.steps_per_epoch
            if max_steps is None
            else min(max_steps, loop.batches.steps_per_epoch)
        )
        # A no-op logger still makes train_epoch read the loss back every log_every steps, the
        # one host sync train.run has inside its loop.
        loss_sum = train.train_epoch(loop, self.epochs_done, range(steps), lambda *_: None)
        self.epochs_done += 1
        return loss_sum.item() / min(len(loop.batches.labels), steps * loop.cfg.batch_size)


Epoch = Callable[[int | None], float]  # one pass (or max_steps steps) -> mean train loss


def make_loops(
    init: nn.Module, images: np.ndarray, labels: np.ndarray, device: torch.device, ablations: bool
) -> dict[str, Callable[[], Epoch]]:
    """name -> setup function returning a fresh epoch (same initial weights every time).

    Setup (model copy, optimizer, DataLoader) is untimed; the epoch it returns is what is timed.
    """
    cfg = TrainConfig(lr=0.01, batch_size=64)  # the defaults of params.yaml, spelled out
    # train.run moves the data to the device once, before its epoch loop.
    train_x, train_y = torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device)
    seeds_data = SeedsCIFAR(np.ascontiguousarray(images.transpose(0, 2, 3, 1)), labels.tolist())

    def pipeline(cfg: TrainConfig) -> Callable[[], Epoch]:
        def setup() -> Epoch:
            torch.backends.cudnn.benchmark = False  # train.run leaves PyTorch's default
            return Pipeline(init, train_x, train_y, cfg, device).epoch

        return setup

    def seeds(dataset: Dataset) -> Callable[[], Epoch]:
        def setup() -> Epoch:
            torch.backends.cudnn.benchmark = False  # the tutorial leaves it off
            model = copy.deepcopy(init).to(device)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
            loader = DataLoader(dataset, batch_size=64, shuffle=True)
            return lambda max_steps: seeds_epoch(model, loader, optimizer, device, max_steps)

        return setup

    loops = {"pipeline": pipeline(cfg), "seeds": seeds(seeds_data)}
    if device.type == "cuda":
        # The step as one CUDA graph (train.cuda_graph): each pass is a fresh loop, so its 3
        # eager warm-up steps and the capture are inside the timed pass.
        loops["pipeline_graph"] = pipeline(cfg.model_copy(update={"cuda_graph": True}))
        fp32_graph = cfg.model_copy(update={"cuda_graph": True, "amp": False})
        loops["pipeline_graph_fp32"] = pipeline(fp32_graph)
        # The eager twin each graphed loop's losses are checked against (graph_loss_lines).
        loops["pipeline_fp32"] = pipeline(cfg.model_copy(update={"amp": False}))
    if ablations:
        # Where the gap comes from: the pipeline without bf16 autocast, without channels_last
        # too, and the seeds' loop on already-converted float tensors (no PIL, no ToTensor).
        fp32 = cfg.model_copy(update={"amp": False})
        loops["pipeline_fp32"] = pipeline(fp32)
        loops["pipeline_fp32_nchw"] = pipeline(fp32.model_copy(update={"channels_last": False}))
        floats = TensorDataset(torch.from_numpy(images).float().div(255), torch.from_numpy(labels))
        loops["seeds_float_tensors"] = seeds(floats)
    return loops


def bench_device(
    device: torch.device,
    images: np.ndarray,
    labels: np.ndarray,
    repeats: int,
    warmup_steps: int,
    ablations: bool,
) -> dict[str, Any]:
    torch.manual_seed(0)
    init = tutorial_cnn(10, 32)
    loops = make_loops(init, images, labels, device, ablations)
    for setup in loops.values():
        setup()(warmup_steps)
    names = list(loops)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    losses: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            epoch = loops[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            losses[name].append(epoch(None))  # ends on a host sync (loss read)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - t0)
        print(
            f"  [{device.type}] repeat {r + 1}/{repeats}: "
            + ", ".join(f"{name} {len(images) / seconds[name][-1]:.0f} img/s" for name in names)
        )
    result: dict[str, Any] = {"loops": {}}
    for name in names:
        ips = [len(images) / s for s in seconds[name]]
        result["loops"][name] = {
            "images_per_second": summarize(ips),
            "seconds_per_pass": seconds[name],
            "mean_train_loss_per_pass": losses[name],
        }
    med = {name: result["loops"][name]["images_per_second"]["median"] for name in names}
    result["ratio_pipeline_over_seeds"] = med["pipeline"] / med["seeds"]
    result["target_ratio"] = TARGETS.get(device.type)
    return result


def loader_only(images: np.ndarray, labels: np.ndarray) -> float:
    """Images/s of the seeds' DataLoader alone (PIL + ToTensor + collate): its ceiling."""
    data = SeedsCIFAR(np.ascontiguousarray(images.transpose(0, 2, 3, 1)), labels.tolist())
    t0 = time.perf_counter()
    for _ in DataLoader(data, batch_size=64, shuffle=True):
        pass
    return len(images) / (time.perf_counter() - t0)


def report(
    info: dict[str, Any], args: argparse.Namespace, per_device: dict[str, Any], loader_ips: float
) -> str:
    cpu_bf16 = precision.cpu_computes_bf16()
    amp_note = (
        "on CUDA and on this CPU (`precision.cpu_computes_bf16`: AMX, or AMD's AVX512-BF16)"
        if cpu_bf16
        else "on CUDA only (fp32 is faster on this CPU: `precision.cpu_computes_bf16`)"
    )
    lines = [
        f"## Train loop: pipeline vs seeds (`bench/{NAME}.py`)",
        "",
        f"Machine: {machine_line(info)}.",
        f"Command: `uv run python bench/{NAME}.py --images {args.images} --repeats {args.repeats}"
        f" --warmup-steps {args.warmup_steps}"
        f"{f' --threads {args.threads}' if args.threads else ''}"
        f"{' --ablations' if args.ablations else ''}"
        f"{' --malloc-default' if args.malloc_default else ''}`",
        "",
        f"{args.images} real CIFAR-10 train images (32x32 JPEGs, decoded once, untimed); one pass "
        f"= one epoch over them at batch 64, SGD lr 0.01, the tutorial CNN from the same initial "
        f"weights; {args.repeats} passes per loop, alternating, after {args.warmup_steps} "
        "warm-up steps each. Timed: the whole epoch, from shuffling to the last step's loss "
        "read back (GPU synchronised). *seeds*: the tutorial's loop (per-item PIL + ToTensor "
        "Dataset, DataLoader num_workers 0, NCHW fp32, `loss.item()` every step). *pipeline*: "
        "`visionpipe.train.train_epoch`, the loop `train.run` calls, with the default "
        "TrainConfig (uint8 data on the device, randperm slices, `.float().div_(255)`, "
        f"channels_last, bf16 autocast {amp_note}, LambdaLR step); TensorBoard, tqdm, "
        "validation and checkpoints not timed. *_graph* (CUDA only): `train.cuda_graph=true`, "
        "the step captured as one CUDA graph after 3 eager steps, those and the capture timed "
        "within the pass. *_fp32*: `train.amp=false`; *_nchw*: "
        "`train.channels_last=false`. Both loops run in one process, with glibc's malloc "
        + (
            "left as it is (`--malloc-default`)."
            if args.malloc_default
            else "reusing freed memory, as the train stage sets it (`memory.keep_freed_memory`)."
        ),
        "",
        "| device | loop | images/s (median) | min | max | ratio vs seeds | target |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    lines += table_rows(per_device)
    lines += [
        "",
        f"Seeds' DataLoader alone (PIL + ToTensor + collate, no training): "
        f"{loader_ips:.0f} images/s, the ceiling of the seeds' loop on this machine.",
    ]
    lines += graph_loss_lines(per_device)
    lines += busy_note(info)
    return "\n".join(lines)


def table_rows(per_device: dict[str, Any]) -> list[str]:
    """One row per device and loop: its images/s and its ratio to the seeds' loop."""
    rows = []
    for dev, res in per_device.items():
        seeds = res["loops"]["seeds"]["images_per_second"]["median"]
        for name, loop in res["loops"].items():
            s = loop["images_per_second"]
            ratio = s["median"] / seeds
            target = ""
            if name.startswith("pipeline") and res["target_ratio"]:
                met = "met" if ratio >= res["target_ratio"] else "NOT met"
                target = f"≥ {res['target_ratio']:g}x: {met}"
            rows.append(
                f"| {dev} | {name} | {s['median']:.0f} | {s['min']:.0f} | "
                f"{s['max']:.0f} | {ratio:.2f}x | {target} |"
            )
    return rows


# The graph replays the eager step's kernels but with the fused optimizer (eager: foreach), which
# rounds differently; over an epoch the mean losses stay this close (relative).
GRAPH_LOSS_TOLERANCE = 1e-2


def graph_loss_lines(per_device: dict[str, Any]) -> list[str]:
    """Each graphed loop's mean train loss against its eager twin's: every pass starts from the
    same weights and shuffles alike, so they must agree within GRAPH_LOSS_TOLERANCE."""
    lines = []
    for dev, res in per_device.items():
        loops = res["loops"]
        for name in (n for n in loops if "_graph" in n):
            eager = name.replace("_graph", "")
            if eager not in loops:
                continue
            graph_loss = statistics.median(loops[name]["mean_train_loss_per_pass"])
            eager_loss = statistics.median(loops[eager]["mean_train_loss_per_pass"])
            diff = abs(graph_loss - eager_loss) / eager_loss
            ok = "within" if diff <= GRAPH_LOSS_TOLERANCE else "NOT within"
            lines.append(
                f"- [{dev}] mean train loss per pass, {name} {graph_loss:.4f} vs {eager} "
                f"{eager_loss:.4f}: {diff:.1e} relative, {ok} the {GRAPH_LOSS_TOLERANCE:g} "
                "tolerance."
            )
    return ["", *lines] if lines else []


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="train images per pass")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per loop")
    parser.add_argument("--warmup-steps", type=int, default=20, help="untimed steps per loop")
    parser.add_argument(
        "--devices",
        default=None,
        help="comma-separated, e.g. cpu,cuda (default: cpu, plus cuda if present)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's own choice)",
    )
    parser.add_argument(
        "--ablations",
        action="store_true",
        help="also time the pipeline in fp32, in fp32 NCHW, and seeds on float tensors",
    )
    parser.add_argument(
        "--malloc-default",
        action="store_true",
        help="leave glibc's malloc as it is (the train stage makes it reuse freed memory)",
    )
    parser.add_argument(
        "--zip", type=Path, default=DEFAULT_CIFAR_ZIP, help="path of cifar10-jpeg.zip"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave RESULTS.md and results/ alone"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    devices = (
        args.devices.split(",")
        if args.devices
        else (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    # As train.run does; process-wide, so both loops run with the same allocator settings.
    reuse = False if args.malloc_default else memory.keep_freed_memory()
    info = announce_machine()
    images, labels, _ = load_cifar_jpegs(args.zip, "train", args.images)
    print(f"decoded {len(images)} train images from {args.zip}")
    per_device = {}
    for dev in devices:
        per_device[dev] = bench_device(
            torch.device(dev), images, labels, args.repeats, args.warmup_steps, args.ablations
        )
    loader_ips = loader_only(images, labels)

    body = report(info, args, per_device, loader_ips)
    print("\n" + "=" * 72 + "\n" + body + "\n" + "=" * 72)
    if not args.no_write:
        payload = {
            "benchmark": NAME,
            "machine": info,
            "args": {**vars(args), "zip": str(args.zip)},
            "devices": per_device,
            "seeds_loader_only_images_per_second": loader_ips,
            "keep_freed_memory": reuse,
        }
        name = result_name(NAME, info)
        print(f"wrote {write_json_result(name, payload)} and {update_results_md(name, body)}")


if __name__ == "__main__":
    main()
