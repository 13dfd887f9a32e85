"""docs/web/index.html, the example page of docs/deploy.md ("In a web page"): an exported model run
by onnxruntime-web in headless Chromium labels a photo as `visionpipe predict` does.

The test lays the folder out as the docs say (the page, model.onnx, onnxruntime-web's three dist
files under ort/), serves it on loopback, chooses each photo in the page's file input and reads
the classes and probabilities it shows. The model is a real export with random weights scaled to
trained-size logits, so a wrong class order, BGR pixels or another resize than predict's changes
the answer. The photos are PNGs: their pixels decode the same in Chromium and Pillow.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tests.browser import CHROMIUM, DevTools, start_chromium
from tests.helpers import ROOT, http_server, model_info, run
from visionpipe.export import export_onnx
from visionpipe.images import load_array
from visionpipe.models import build_model
from visionpipe.onnxrt import INPUT_NAME, open_session
from visionpipe.predict import percent

PAGE = ROOT / "docs" / "web" / "index.html"
PAGE_FILES = ("index.html", "visionpipe.mjs")
ORT_DIST = ROOT / "tests" / "web" / "node_modules" / "onnxruntime-web" / "dist"
# What docs/deploy.md says to copy into ort/ beside the page.
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
CLASSES = ["zebra", "ant", "moth", "bee", "cat"]  # not sorted: the order is the logits'
SIZE = 32
TOLERANCE = 1e-5  # probability: predict rounds to 6 digits, the runtimes differ by ~1e-6

NODE = shutil.which("node")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="needs Chromium: apt-get install chromium"
)
pytestmark = pytest.mark.skipif(
    NODE is None or not ORT_DIST.is_dir(),
    reason="needs Node.js and onnxruntime-web: cd tests/web && npm ci",
)

# The rows the page shows: [class, "12.3%", probability, how the row displays, where its
# percentage starts].
READ_TOP = """JSON.stringify([...document.querySelectorAll('#top li')].map(li => [
  li.querySelector('.label').textContent, li.querySelector('.probability').textContent,
  Number(li.dataset.probability), getComputedStyle(li).display,
  li.querySelector('.probability').getBoundingClientRect().left]))"""
STATUS = "document.getElementById('status')"


def _export(path: Path) -> Path:
    torch.manual_seed(0)
    arch_params = {"activation": "relu", "batch_norm": True}
    mean, std = [0.49, 0.48, 0.45], [0.25] * 3
    model = build_model("tutorial_cnn", len(CLASSES), SIZE, arch_params, mean, std).eval()
    with torch.no_grad():  # logits of a few units, as a trained model's (random ones are < 1)
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        last.weight.mul_(6.0 / model(torch.rand(4, 3, SIZE, SIZE)).abs().max())
    info = model_info("tutorial_cnn", CLASSES, SIZE, arch_params, mean)
    export_onnx(model, info, path, opset=18)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("export") / "model.onnx")


def _photos(folder: Path) -> list[Path]:
    """PNGs that predict resizes down, up, and not at all, with odd crop margins and a long side
    of 40.5 pixels (Python's round gives 40), each brighter in one channel than the others."""
    rng = np.random.default_rng(0)
    photos = []
    for i, (w, h) in enumerate([(75, 45), (81, 64), (21, 27), (SIZE, SIZE)]):
        x = np.linspace(0, 1, w)[None, :, None] * np.array([200, 60, 120]) * (i + 1) % 256
        arr = (x + rng.integers(0, 55, (h, w, 3))).clip(0, 255).astype(np.uint8)
        arr[..., i % 3] = arr[..., i % 3] // 2 + 120
        photos.append(folder / f"photo{i}-{w}x{h}.png")
        Image.fromarray(arr).save(photos[-1])
    return photos


def _site(folder: Path, model: Path) -> Path:
    (folder / "ort").mkdir(parents=True)
    for name in PAGE_FILES:
        shutil.copy(PAGE.parent / name, folder / name)
    shutil.copy(model, folder / "model.onnx")
    for name in ORT_FILES:
        shutil.copy(ORT_DIST / name, folder / "ort" / name)
    return folder


async def _label(debug_port: int, url: str, photos: list[Path], shot: Path) -> Any:
    """Open the page, choose each photo in turn; the rows shown for each, and the JS errors."""
    import aiohttp

    async with aiohttp.ClientSession(trust_env=False) as http:
        async with http.get(f"http://127.0.0.1:{debug_port}/json/list") as resp:
            page = next(t for t in await resp.json() if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            tools = DevTools(ws)
            await tools.send("Runtime.enable")
            await tools.send("Page.navigate", url=url)
            # Until the navigation commits, the document is about:blank's, without #file.
            loaded = "document.getElementById('file')?.disabled === false"
            await tools.wait_for(f"{loaded} || {STATUS}?.className === 'error'", timeout=60)
            assert await tools.evaluate(f"{STATUS}.className") == "", await tools.evaluate(
                f"{STATUS}.textContent"
            )
            root = (await tools.send("DOM.getDocument"))["root"]["nodeId"]
            node = (await tools.send("DOM.querySelector", nodeId=root, selector="#file"))["nodeId"]
            shown = {}
            for photo in photos:
                await tools.send("DOM.setFileInputFiles", nodeId=node, files=[str(photo)])
                done = f"{STATUS}.textContent === {json.dumps(photo.name)} || {STATUS}.className"
                await tools.wait_for(done)
                assert await tools.evaluate(f"{STATUS}.className") == "", await tools.evaluate(
                    f"{STATUS}.textContent"
                )
                shown[photo.name] = json.loads(await tools.evaluate(READ_TOP))
            picture = await tools.send("Page.captureScreenshot", format="png")
            shot.write_bytes(base64.b64decode(picture["data"]))  # the last photo's answer
            described = await tools.evaluate("document.getElementById('model').textContent")
            return shown, described, tools.errors


@needs_chromium
def test_the_example_page_labels_photos_as_predict_does(tmp_path: Path, model: Path) -> None:
    photos = _photos(tmp_path)
    out = tmp_path / "predict.json"
    cli = [sys.executable, "-m", "visionpipe.cli", "predict", "--model", str(model)]
    run([*cli, "--topk", "3", "--json", str(out), *map(str, photos)], ROOT)
    want = {Path(p["file"]).name: p["top"] for p in json.loads(out.read_text())}
    site = _site(tmp_path / "site", model)
    chromium, port = start_chromium(tmp_path / "profile")
    try:
        with http_server(site) as url:
            shown, described, errors = asyncio.run(
                _label(port, f"{url}/index.html", photos, tmp_path / "page.png")
            )
    finally:
        chromium.terminate()
        chromium.wait(timeout=30)
    assert not errors, errors
    assert described == f"tutorial_cnn: {len(CLASSES)} classes, {SIZE} px"
    for name, top in want.items():
        rows = shown[name]
        assert [r[0] for r in rows] == [t["class"] for t in top], (name, rows, top)
        diffs = [abs(r[2] - t["probability"]) for r, t in zip(rows, top, strict=True)]
        assert max(diffs) <= TOLERANCE, (name, rows, top)
        assert [r[1] for r in rows] == [percent(r[2], 1) for r in rows]
        # Numbered 1., 2., 3. as an ordered list, the percentages in one column.
        assert {r[3] for r in rows} == {"list-item"}, rows
        assert len({r[4] for r in rows}) == 1, rows
    assert len({want[name][0]["class"] for name in want}) > 1, "every photo got the same class"


def test_the_node_snippet_names_the_class_onnxruntime_gives(tmp_path: Path, model: Path) -> None:
    blocks = re.findall(r"```js\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.S)
    (snippet,) = [b for b in blocks if "node:fs" in b]
    (tmp_path / "snippet.mjs").write_text(snippet)
    shutil.copy(PAGE.parent / "visionpipe.mjs", tmp_path / "visionpipe.mjs")
    (tmp_path / "node_modules").symlink_to(ORT_DIST.parents[1])
    (tmp_path / "models").mkdir()
    shutil.copy(model, tmp_path / "models" / "model.onnx")
    assert NODE is not None
    shown = run([NODE, "snippet.mjs"], tmp_path).stdout.strip()
    grey = np.full((1, 3, SIZE, SIZE), 0.5, np.float32)
    logits = open_session(model).run(None, {INPUT_NAME: grey})[0]
    assert shown == CLASSES[int(logits.argmax())], shown


def test_percent_shows_a_probability_as_predict_prints_it(tmp_path: Path) -> None:
    # Two significant digits below 1% (one decimal reads 0.0% for a class at 0.04%), the
    # halves rounded up as Python's decimal does, and a diverged model's NaN as n/a.
    small = [0.9, 0.0123, 0.0099, 0.0012, 0.00098, 0.0004, 0.00001234, 0.0, 0.00995, 0.00125]
    small += [0.000995, 0.0000125, 1e-12, 1.0]
    shutil.copy(PAGE.parent / "visionpipe.mjs", tmp_path / "visionpipe.mjs")
    script = "import { percent } from './visionpipe.mjs';\n"
    script += f"console.log(JSON.stringify([...{json.dumps(small)}, NaN].map(percent)));\n"
    (tmp_path / "percent.mjs").write_text(script)
    assert NODE is not None
    shown = json.loads(run([NODE, "percent.mjs"], tmp_path).stdout)
    assert shown == [*(percent(p, 1) for p in small), "n/a"], shown
    assert shown[5] == "0.040%", shown


# Node prints the levels (0-255) of modelInput's output for each decoded image of cases.json.
MODEL_INPUT_LEVELS = """import { readFileSync } from 'node:fs';
import { modelInput } from './visionpipe.mjs';
const size = Number(process.argv[2]);
const cases = JSON.parse(readFileSync('cases.json', 'utf8'));
console.log(JSON.stringify(cases.map(({ file, width, height }) => Array.from(
  modelInput(new Uint8ClampedArray(readFileSync(file)), width, height, size),
  (v) => Math.round(v * 255)))));
"""


def test_model_input_gives_predict_s_bytes_for_every_shape(tmp_path: Path) -> None:
    # Noise, where any other filter, rounding or pass order shows: wide, up-scaled, as it is, and
    # tall images (which Pillow alone would resize columns first).
    rng = np.random.default_rng(0)
    cases, want = [], []
    shapes = [(75, 45), (21, 27), (SIZE, SIZE), (65, 200), (117, 253), (40, 164)]
    for i, (w, h) in enumerate(shapes):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        opaque = np.full((h, w, 1), 255, np.uint8)
        (tmp_path / f"{i}.rgba").write_bytes(np.concatenate([rgb, opaque], 2).tobytes())
        cases.append({"file": f"{i}.rgba", "width": w, "height": h})
        png = io.BytesIO()
        Image.fromarray(rgb).save(png, "PNG")
        want.append(load_array(png.getvalue(), "photo.png", SIZE).ravel().tolist())
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    (tmp_path / "levels.mjs").write_text(MODEL_INPUT_LEVELS)
    shutil.copy(PAGE.parent / "visionpipe.mjs", tmp_path / "visionpipe.mjs")
    assert NODE is not None
    got = json.loads(run([NODE, "levels.mjs", str(SIZE)], tmp_path).stdout)
    for case, levels, expected in zip(cases, got, want, strict=True):
        assert levels == expected, case
