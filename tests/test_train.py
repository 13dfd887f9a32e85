"""Training: reproducibility, resume after a kill, batched augmentation, schedules, models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_params
from visionpipe import paths, train
from visionpipe.models import ARCHS, build_model, load_model, tutorial_cnn


def _weights() -> dict[str, torch.Tensor]:
    return torch.load(paths.MODEL, weights_only=True)["state_dict"]


def test_two_cpu_runs_give_bit_identical_weights(processed: Path) -> None:
    params = tiny_params(augment={"crop_padding": 2, "flip": True}, momentum=0.9)
    train.run(params)
    first = _weights()
    train.run(params)
    second = _weights()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    # And the run learned something from the learnable tiny data.
    metrics = (processed / paths.TRAIN_METRICS).read_text()
    assert '"val_accuracy"' in metrics


def test_interrupted_run_resumes_to_the_same_weights(
    processed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = tiny_params(epochs=3, augment={"crop_padding": 2, "flip": True}, momentum=0.9)
    train.run(params)
    uninterrupted = _weights()
    paths.MODEL.unlink()
    paths.CHECKPOINT_DIR.joinpath("last.pt").unlink()

    real_eval = train.evaluate_split
    calls = {"n": 0}

    def dying_eval(*args, **kwargs):  # the power fails during epoch 3's validation
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate_split", dying_eval)
    with pytest.raises(KeyboardInterrupt):
        train.run(params)
    assert not paths.MODEL.exists(), "an interrupted run must not leave a model behind"
    monkeypatch.setattr(train, "evaluate_split", real_eval)
    train.run(params)
    timings = (processed / paths.TRAIN_TIMINGS).read_text()
    assert '"resumed_from_epoch": 2' in timings
    resumed = _weights()
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    epochs = (processed / paths.PLOT_EPOCHS).read_text().splitlines()
    assert [line.split(",")[0] for line in epochs[1:]] == ["1", "2", "3"]


def test_other_params_start_fresh(processed: Path) -> None:
    train.run(tiny_params())
    train.run(tiny_params(lr=0.05, epochs=1))
    assert '"resumed_from_epoch": 0' in (processed / paths.TRAIN_TIMINGS).read_text()


def test_early_stopping(processed: Path) -> None:
    metrics = train.run(tiny_params(epochs=50, lr=10.0, patience=1))
    assert metrics["stopped_early"] and metrics["epochs_run"] < 50


def test_batch_crop_and_flip_are_per_image_shifts() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    gen = torch.Generator().manual_seed(0)
    out = train.batch_crop(x, 1, gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    for img_in, img_out in zip(x, out, strict=True):
        padded = torch.nn.functional.pad(img_in, (1, 1, 1, 1))
        windows = [padded[:, dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(img_out, w) for w in windows)
    flipped = train.batch_flip_lr(x, torch.Generator().manual_seed(1))
    for img_in, img_out in zip(x, flipped, strict=True):
        assert torch.equal(img_out, img_in) or torch.equal(img_out, img_in.flip(2))


def test_lr_schedules() -> None:
    assert train.lr_factor(0, 100, 0, "constant") == 1.0
    assert train.lr_factor(4, 100, 10, "constant") == pytest.approx(0.5)
    assert train.lr_factor(99, 100, 0, "cosine") < 0.01
    peak = max(range(100), key=lambda s: train.lr_factor(s, 100, 0, "onecycle"))
    assert peak == 24 and train.lr_factor(99, 100, 0, "onecycle") < 0.02


def test_tutorial_cnn_is_the_seeds_model() -> None:
    net = tutorial_cnn(10, 32)
    assert [type(m).__name__ for m in net] == [
        "Conv2d",
        "MaxPool2d",
        "Conv2d",
        "MaxPool2d",
        "Conv2d",
        "MaxPool2d",
        "Flatten",
        "Linear",
        "Linear",
    ]
    assert (net[0].in_channels, net[0].out_channels, net[0].kernel_size, net[0].padding) == (
        3,
        32,
        (5, 5),
        (2, 2),
    )
    assert (net[7].in_features, net[7].out_features, net[8].out_features) == (1024, 64, 10)
    assert (
        sum(p.numel() for p in net.parameters()) == 145578
    )  # the seeds model: 2432 + 25632 + 51264 + 65600 + 650


@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "vgg16"])
@pytest.mark.parametrize(("classes", "size"), [(10, 32), (2, 64)])
def test_every_arch_builds_for_any_classes_and_size(arch: str, classes: int, size: int) -> None:
    model = build_model(arch, classes, size, mean=[0.5] * 3, std=[0.25] * 3).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, size, size)).shape == (2, classes)


def test_vgg16_classifier_is_replaced_as_the_seeds_do() -> None:
    model = build_model("vgg16", 2, 32)
    assert model.net.classifier[6].out_features == 2


def test_saved_model_is_weights_and_plain_metadata(processed: Path) -> None:
    train.run(tiny_params(epochs=1))
    blob = torch.load(paths.MODEL, weights_only=True)
    assert set(blob) == {"state_dict", "meta"}
    meta = blob["meta"]
    assert meta["classes"] == ["cat", "dog", "frog"] and meta["arch"] == "tutorial_cnn"
    assert meta["params"]["train"]["lr"] == 0.01 and meta["visionpipe_version"]
    model, _ = load_model(paths.MODEL)
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 3)


def test_fine_tune_from_another_runs_model(processed: Path) -> None:
    train.run(tiny_params(epochs=1))
    done = torch.load(paths.MODEL, weights_only=True)["state_dict"]
    model = build_model("tutorial_cnn", 3, 16, {"weights": str(paths.MODEL)})
    assert torch.equal(model.net[0].weight, done["net.0.weight"])
    other = build_model("tutorial_cnn", 5, 16, {"weights": str(paths.MODEL)})  # new class count
    assert torch.equal(other.net[0].weight, done["net.0.weight"])
    assert other.net[-1].out_features == 5
    with pytest.raises(FileNotFoundError, match=r"model\.weights"):
        build_model("resnet18", 2, 32, {"weights": "missing.pt"})


def test_divergence_stops_training_and_export_stays_honest(processed: Path) -> None:
    import json

    from visionpipe import export
    from visionpipe.config import parse_params

    metrics = train.run(tiny_params(epochs=5, lr=100.0, momentum=0.99))
    assert metrics["diverged"] and metrics["epochs_run"] < 5
    saved = json.loads(paths.TRAIN_METRICS.read_text())  # strict JSON: NaN became null
    assert saved["diverged"] is True and saved["train_loss"] is None
    result = export.run(parse_params({}).export.model_copy(update={"parity_images": 20}))
    assert result["nonfinite_logits"] > 0 and result["max_abs_logit_diff"] <= 1e-4
