"""HEIC/HEIF photos, the iPhone's format: decoded, rotated, trained on and predicted like the rest.

The photos are tests/data/heic/*.heic, made by tests/heic_fixtures.py with pillow-heif's encoder
(`uv run --no-project --with pillow-heif --with numpy python tests/heic_fixtures.py`): pi-heif,
the project's decoder, cannot write them. HEVC is lossy, so each picture is compared with a PNG
copy of the pixels it was made from by the mean colour of its four flat blocks.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.heic_fixtures import BURST, DEEP_HALVES, HEIC_DIR, PHOTOS, UPRIGHT, block_means, blocks
from tests.helpers import ROOT, env
from visionpipe import images, paths
from visionpipe.images import BadImageError, decode_rgb

LEVELS = 4  # HEVC at quality 90 keeps a flat block's mean colour within this many levels


def _heic(name: str) -> bytes:
    return (HEIC_DIR / f"{name}.heic").read_bytes()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _means(img: Image.Image) -> np.ndarray:
    return block_means(np.asarray(img, dtype=np.float64))


def test_heic_photos_decode_to_the_colours_they_were_made_of() -> None:
    for name, colors in PHOTOS.items():
        img = decode_rgb(_heic(name), f"{name}.heic")
        assert img.mode == "RGB" and img.size == (32, 24), name
        assert np.allclose(_means(img), np.array(colors), atol=LEVELS), name
        # Sniffed by content, as every format is: a HEIC saved as .jpg decodes the same.
        assert np.array_equal(np.asarray(decode_rgb(_heic(name), f"{name}.jpg")), np.asarray(img))


def test_an_iphone_photo_stored_on_its_side_is_turned_upright_once() -> None:
    data = _heic("rotated")
    # The file says the turn twice, as an iPhone's do: HEIF's irot box and EXIF orientation 6.
    assert b"irot" in data and b"Exif" in data
    img = decode_rgb(data, "IMG_0001.HEIC")
    assert img.size == (24, 32)  # portrait, as the phone shows it: not turned back to 32x24
    assert np.allclose(_means(img), np.array(UPRIGHT), atol=LEVELS)  # red above blue


def test_a_burst_gives_its_primary_picture_and_alpha_and_10_bits_decode_as_in_png() -> None:
    primary = decode_rgb(_heic("burst"), "burst.heic")
    assert np.allclose(_means(primary), np.array(BURST[1]), atol=LEVELS)
    # Alpha is dropped, as from a PNG: the colours stay.
    rgba = decode_rgb(_heic("alpha"), "alpha.heic")
    assert np.allclose(_means(rgba), np.array(PHOTOS["bees_1"]), atol=LEVELS)
    # 10 bits a sample scale to 8 rather than clip, as a 16-bit PNG's do.
    deep = np.asarray(decode_rgb(_heic("deep"), "deep.heic"), dtype=np.float64)
    halves = [deep[:, :16].mean(), deep[:, 16:].mean()]
    assert np.allclose(halves, [v // 257 for v in DEEP_HALVES], atol=LEVELS)


def test_a_damaged_heic_is_undecodable_with_libheifs_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = _heic("ants_1")
    cases = {
        "half.heic": (data[: len(data) // 2], "damaged or truncated HEIC/HEIF image: "),
        "header.HEIC": (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64), "No meta box"),
        "cut.heic": (data[:-10], "cannot decode: Invalid input: Unexpected end of file"),
        # One byte changed where libheif's decoder stops with EOFError, not Pillow's OSError.
        "flipped.heic": (_flipped(data, 416), "cannot decode: EOFError: "),
    }
    for name, (bad, reason) in cases.items():
        with pytest.raises(BadImageError) as err:
            decode_rgb(bad, name)
        assert reason in err.value.reason, err.value.reason
    monkeypatch.setattr(images, "MAX_PIXELS", 500)
    with pytest.raises(BadImageError, match=r"image is 32x24 \(768 pixels\), above the 500 limit"):
        decode_rgb(data, "big.heic")


def _flipped(data: bytes, at: int) -> bytes:
    """`data` with the bits of its byte `at` flipped: a damaged copy."""
    damaged = bytearray(data)
    damaged[at] ^= 0xFF
    return bytes(damaged)


def test_the_heif_decoder_is_loaded_only_when_a_heif_file_is_met() -> None:
    """Importing pi-heif costs ~10 ms of every start; AVIF stays Pillow's once it is loaded."""
    code = (
        "import io, sys; from PIL import Image; from visionpipe import images;"
        "assert 'pi_heif' not in sys.modules;"
        f"images.decode_rgb(open({str(HEIC_DIR / 'ants_1.heic')!r}, 'rb').read(), 'a.heic');"
        "assert 'pi_heif' in sys.modules; buf = io.BytesIO();"
        "Image.new('RGB', (20, 20), 'red').save(buf, 'AVIF');"
        "print(*images.decode_rgb(buf.getvalue(), 'c.avif').getpixel((9, 9)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    red, green, blue = map(int, done.stdout.split())
    assert red > 240 and max(green, blue) < 15


def test_an_avif_of_the_generic_mif1_brand_stays_pillows_before_and_after_a_heic(
    tmp_path: Path,
) -> None:
    """Some encoders write AVIF with the major brand mif1 (AVIF among the compatible ones):
    pi-heif, which has no AV1 decoder, must not take it, loaded or not."""
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(buf, "AVIF")
    data = buf.getvalue()
    assert data[8:12] == b"avif" and b"avif" in data[16:32]
    (tmp_path / "a.avif").write_bytes(data[:8] + b"mif1" + data[12:])
    code = (
        "import sys; from visionpipe import images;"
        f"mif1 = open({str(tmp_path / 'a.avif')!r}, 'rb').read();"
        "first = images.decode_rgb(mif1, 'a.avif').getpixel((9, 9));"
        "assert 'pi_heif' not in sys.modules;"
        f"images.decode_rgb(open({str(HEIC_DIR / 'ants_1.heic')!r}, 'rb').read(), 'a.heic');"
        "print(*first, *images.decode_rgb(mif1, 'a.avif').getpixel((9, 9)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    pixels = list(map(int, done.stdout.split()))
    for red, green, blue in (pixels[:3], pixels[3:]):
        assert red > 240 and max(green, blue) < 15


def _photo_folder(root: Path, kind: str) -> Path:
    """photos/{train,test}/ants/1.<kind>, ...: the HEIC photos, or PNG copies of the pixels
    they were made of; the third photo of each class is a test photo."""
    for name, colors in PHOTOS.items():
        cls, number = name.split("_")
        split = "test" if number == "3" else "train"
        path = root / "photos" / split / cls / f"{number}.{kind}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_heic(name) if kind == "heic" else _png(blocks(colors)))
    return root / "photos"


def _preprocess(photos: Path, work: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """`dvc repro preprocess` of a folder source, as the download and preprocess stages run it:
    its meta and report, and each photo's pixels by its name without suffix (validation is
    carved from train by a hash of the path: HEIC and PNG copies may land in different splits)."""
    from visionpipe import preprocess, sources
    from visionpipe.config.params import parse_params
    from visionpipe.split_tensors import load_split

    work.mkdir()
    monkeypatch.chdir(work)
    sources.fetch_dataset(
        "imagefolder", str(photos), None, paths.RAW_DIR, base_dir=work, mirror=None
    )
    data = {"dataset": "imagefolder", "source": str(photos), "val_fraction": 0.5}
    params = parse_params({"data": data, "preprocess": {"image_size": 16}})
    meta = preprocess.run(params, workers=2)  # worker processes meet the HEIC files first
    report = json.loads(paths.PREPROCESS_REPORT.read_text())
    splits = {split: load_split(split)[0].numpy() for split in ("train", "val", "test")}
    with open(paths.PROCESSED_DIR / paths.SPLIT_RECORD.name, newline="") as f:
        rows = list(csv.DictReader(f))
    pixels = {r["file"].rsplit(".", 1)[0]: splits[r["split"]][int(r["index"])] for r in rows}
    return {"meta": meta, "report": report, "pixels": pixels}


def test_a_folder_of_heic_photos_trains_as_its_png_copies_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    heic = _preprocess(_photo_folder(tmp_path / "h", "heic"), tmp_path / "wh", monkeypatch)
    png = _preprocess(_photo_folder(tmp_path / "p", "png"), tmp_path / "wp", monkeypatch)
    assert heic["report"]["skipped_bad_images"] == 0, heic["report"]["bad_images"]
    assert heic["meta"]["classes"] == png["meta"]["classes"] == ["ants", "bees"]
    assert heic["pixels"].keys() == png["pixels"].keys() and len(heic["pixels"]) == len(PHOTOS)
    for name, got in heic["pixels"].items():
        means = [
            block_means(a.transpose(1, 2, 0).astype(np.float64)) for a in (got, png["pixels"][name])
        ]
        assert np.allclose(*means, atol=LEVELS), name


def _predict(files: list[Path], model: Path, out: Path) -> dict[str, dict[str, float]]:
    """`visionpipe predict FILES --json OUT`: each file's name and its class probabilities."""
    from visionpipe.cli import main

    args = ["predict", *map(str, files), "--model", str(model), "--topk", "3", "--json", str(out)]
    assert main(args) == 0
    answers = json.loads(out.read_text())
    return {Path(a["file"]).stem: {t["class"]: t["probability"] for t in a["top"]} for a in answers}


def test_predict_and_serve_answer_heic_photos_as_their_png_copies(tmp_path: Path) -> None:
    from tests.serving import post_image, serve
    from tests.tiny_onnx import write_tiny_onnx

    model = write_tiny_onnx(tmp_path / "model.onnx")
    pictures = {**{n: blocks(c) for n, c in PHOTOS.items()}, "rotated": blocks(UPRIGHT, 24, 32)}
    (tmp_path / "heic").mkdir()
    (tmp_path / "png").mkdir()
    for name, arr in pictures.items():
        (tmp_path / "heic" / f"{name}.heic").write_bytes(_heic(name))
        (tmp_path / "png" / f"{name}.png").write_bytes(_png(arr))
    heic = _predict(sorted((tmp_path / "heic").iterdir()), model, tmp_path / "heic.json")
    png = _predict(sorted((tmp_path / "png").iterdir()), model, tmp_path / "png.json")
    assert heic.keys() == png.keys() == pictures.keys()
    for name, probabilities in heic.items():
        assert probabilities.keys() == png[name].keys(), name
        assert np.allclose(list(probabilities.values()), list(png[name].values()), atol=0.02)

    with serve(model, tmp_path / "serve.log") as served:
        status, body = post_image(
            f"{served.url}/predict?name=IMG.HEIC", _heic("rotated"), "image/heic"
        )
    assert status == 200, body
    top = {t["class"]: t["probability"] for t in body["predictions"][0]["top"]}
    assert top == heic["rotated"]
