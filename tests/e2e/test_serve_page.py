"""The page `visionpipe serve` shows: photos chosen or dropped in headless Chromium get the answer
the API gives.

Chromium runs with its DevTools protocol on a loopback port; the test drives it over the
protocol's websocket (aiohttp's client): it opens the page, hands the file input real files as a
user choosing them does (`DOM.setFileInputFiles`, which fires the input's change event), drops a
file on the drop zone as a drag-and-drop does (a `drop` event carrying a DataTransfer), and reads
the answers from the DOM. Every host name but the loopback server's is unresolvable, so the page
must work offline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.browser import CHROMIUM, DevTools, start_chromium
from tests.heic_fixtures import HEIC_DIR
from tests.serving import post_files, serve
from tests.tiny_onnx import write_tiny_onnx
from visionpipe.predict import percent

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install chromium")

# What the page shows of each answer, as [file, [[class, "12.3%"], ...]], newest first.
READ_ANSWERS = """JSON.stringify([...document.querySelectorAll('#results .prediction')].map(li => [
  li.dataset.file,
  [...li.querySelectorAll('.row')].map(r =>
    [r.querySelector('.label').textContent, r.querySelector('.probability').textContent]),
  li.querySelector('img').naturalWidth > 0,
]))"""

DROP = """(() => {
  const bytes = Uint8Array.from(atob(%s), c => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], %s, {type: 'image/png'}));
  const zone = document.getElementById('drop');
  const init = {dataTransfer: data, bubbles: true, cancelable: true};
  zone.dispatchEvent(new DragEvent('dragover', init));
  zone.dispatchEvent(new DragEvent('drop', init));
})()"""


@contextlib.asynccontextmanager
async def _page_tools(debug_port: int) -> AsyncIterator[DevTools]:
    """The DevTools protocol of Chromium's one page, over its websocket."""
    import aiohttp

    async with aiohttp.ClientSession(trust_env=False) as http:
        async with http.get(f"http://127.0.0.1:{debug_port}/json/list") as resp:
            targets = await resp.json()
        page = next(t for t in targets if t["type"] == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            yield DevTools(ws)


async def drive_page(debug_port: int, page_url: str, photos: list[Path], drop: Path) -> Any:
    """Open the page, choose `photos`, drop `drop`; what the page then shows."""
    async with _page_tools(debug_port) as tools:
        count = await _choose(tools, page_url, photos)
        said = await tools.evaluate("document.getElementById('status').textContent")
        # The keyboard reaches the file chooser: Tab focuses its input (Enter opens it).
        for kind in ("keyDown", "keyUp"):
            await tools.send(
                "Input.dispatchKeyEvent", type=kind, key="Tab", code="Tab", windowsVirtualKeyCode=9
            )
        focused = await tools.evaluate("document.activeElement.id")
        # The page's own percentages of some small probabilities, to hold beside predict's.
        small = await tools.evaluate(f"JSON.stringify({json.dumps(SMALL)}.map(percent))")
        data = base64.b64encode(drop.read_bytes()).decode()
        await tools.evaluate(DROP % (json.dumps(data), json.dumps(drop.name)))
        await tools.wait_for(f"{count} === {len(photos) + 1}")
        await tools.wait_for(f"JSON.parse({READ_ANSWERS}).every(a => a[2])")  # previews shown
        shown = json.loads(await tools.evaluate(READ_ANSWERS))
        await tools.evaluate(DROP % (json.dumps(base64.b64encode(b"text").decode()), '"x.png"'))
        error = await tools.wait_for(
            "document.getElementById('status').className === 'error'"
            " && document.getElementById('status').textContent"
        )
        return shown, error, tools.errors, (said, focused, json.loads(small))


async def _choose(
    tools: DevTools, page_url: str, photos: list[Path], answered: int | None = None
) -> str:
    """Open the page and choose `photos` in its file input, until `answered` (all of them by
    default) have an answer; the expression counting answers."""
    await tools.send("Runtime.enable")
    await tools.send("Page.navigate", url=page_url)
    # Until the navigation commits, the document is still about:blank's.
    await tools.wait_for("document.getElementById('model')?.textContent.includes('classes')")
    root = (await tools.send("DOM.getDocument"))["root"]["nodeId"]
    node = (await tools.send("DOM.querySelector", nodeId=root, selector="#file"))["nodeId"]
    await tools.send("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in photos])
    count = "document.querySelectorAll('#results .prediction').length"
    await tools.wait_for(f"{count} === {len(photos) if answered is None else answered}")
    return count


async def show_heic(debug_port: int, page_url: str, photo: Path) -> Any:
    """Choose one HEIC photo on the page; its answer's classes and what stands for its preview."""
    async with _page_tools(debug_port) as tools:
        await _choose(tools, page_url, [photo])
        placeholder = "document.querySelector('#results .nopreview')?.textContent"
        shown = await tools.wait_for(placeholder)
        labels = await tools.evaluate(
            "JSON.stringify([...document.querySelectorAll('#results .label')]"
            ".map(e => e.textContent))"
        )
        return shown, json.loads(labels), tools.errors


# Probabilities a model of a thousand classes gives: below 1% the page, as predict, shows two
# significant digits.
SMALL = [0.9, 0.0123, 0.0099, 0.0012, 0.00098, 0.00001234, 0.0, 0.00995, 0.00125, 0.000995, 1e-12]


def _shown(probability: float | None) -> str:
    """How the page shows a probability: null (a diverged model's) as n/a."""
    return "n/a" if probability is None else percent(probability, 1)


@pytest.mark.parametrize("diverged", [False, True], ids=["trained", "diverged"])
def test_photos_chosen_or_dropped_on_the_page_get_the_api_answer(
    tmp_path: Path, diverged: bool
) -> None:
    rng = np.random.default_rng(0)
    photos = []
    for i, name in enumerate(["red.png", "green.jpg", "blue.png"]):
        arr = rng.integers(0, 100, (40, 60, 3), dtype=np.uint8)
        arr[..., i] += 150
        photos.append(tmp_path / name)
        Image.fromarray(arr).save(photos[-1])
    drop, chosen = photos[2], photos[:2]
    model = write_tiny_onnx(tmp_path / "model.onnx", diverged=diverged)
    with serve(model, tmp_path / "server.log") as server:
        files = [(p.name, p.read_bytes()) for p in photos]
        status, api = post_files(f"{server.url}/predict", files)
        assert status == 200, api
        chromium, port = start_chromium(tmp_path / "profile")
        try:
            shown, error, js_errors, (said, focused, small) = asyncio.run(
                drive_page(port, f"{server.url}/", chosen, drop)
            )
        finally:
            chromium.terminate()
            chromium.wait(timeout=30)
    assert not js_errors, js_errors
    want = [
        [p["file"], [[t["class"], _shown(t["probability"])] for t in p["top"]], True]
        for p in api["predictions"]
    ]
    # Newest first: the dropped photo above the chosen ones (each added on top, in order).
    assert shown == [want[2], want[1], want[0]], shown
    assert [row[0] for row in shown] == ["blue.png", "green.jpg", "red.png"]
    if not diverged:
        assert shown[0][1][0][0] == "frog"  # brightest in blue: the third class
    assert ("n/a" in str(shown)) == diverged  # the null probabilities, not "0.0%" or "NaN%"
    assert error == "error: x.png: not a recognised image format; nothing was classified", error
    assert said == "2 images classified, newest at the top" and focused == "file", (said, focused)
    assert small == [percent(p, 1) for p in SMALL], small
    assert small[3:6] == ["0.12%", "0.098%", "0.0012%"], small
    # Two significant digits where rounding reaches the next power; a half up, as toFixed.
    assert small[7:] == ["1.0%", "0.13%", "0.10%", "<0.00000001%"], small


def test_a_heic_photo_the_browser_cannot_draw_gets_its_answer_and_a_placeholder(
    tmp_path: Path,
) -> None:
    # Chromium draws no HEIC; the server reads it (pi-heif), so the answer comes with a
    # placeholder where the preview would be, not a broken image.
    photo = HEIC_DIR / "ants_1.heic"
    model = write_tiny_onnx(tmp_path / "model.onnx")
    with serve(model, tmp_path / "server.log") as server:
        status, api = post_files(f"{server.url}/predict", [(photo.name, photo.read_bytes())])
        assert status == 200, api
        chromium, port = start_chromium(tmp_path / "profile")
        try:
            shown, labels, js_errors = asyncio.run(show_heic(port, f"{server.url}/", photo))
        finally:
            chromium.terminate()
            chromium.wait(timeout=30)
    assert not js_errors, js_errors
    assert shown == "no preview in this browser"
    assert labels == [t["class"] for t in api["predictions"][0]["top"]]


async def choose_many(debug_port: int, page_url: str, photos: list[Path], classified: int) -> Any:
    """Choose `photos` at once; the names shown and the status line once `classified` show."""
    async with _page_tools(debug_port) as tools:
        await _choose(tools, page_url, photos, classified)
        said = await tools.wait_for(
            "document.getElementById('status').textContent.includes('classified')"
            " && document.getElementById('status').textContent"
        )
        names = await tools.evaluate(
            "JSON.stringify([...document.querySelectorAll('#results .prediction')]"
            ".map(li => li.dataset.file))"
        )
        return json.loads(names), said, tools.errors


def test_a_drop_beyond_one_request_goes_in_several_and_a_bad_photo_costs_only_itself(
    tmp_path: Path,
) -> None:
    # Photos of ~24 KB under a 60 KiB request limit: two a request; the bad one's request is
    # refused (422) and sent again without it.
    rng = np.random.default_rng(1)
    photos = []
    for i in range(5):
        photos.append(tmp_path / f"p{i}.png")
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(photos[-1])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    chosen = [*photos[:3], bad, *photos[3:]]
    model = write_tiny_onnx(tmp_path / "model.onnx")
    with serve(model, tmp_path / "server.log", "--max-upload-mb", "0.06") as server:
        chromium, port = start_chromium(tmp_path / "profile")
        try:
            names, said, js_errors = asyncio.run(
                choose_many(port, f"{server.url}/", chosen, len(photos))
            )
        finally:
            chromium.terminate()
            chromium.wait(timeout=30)
        log = (tmp_path / "server.log").read_text()
    assert not js_errors, js_errors
    assert sorted(names) == [p.name for p in photos], names
    assert said == (
        "5 images classified, newest at the top; not classified: bad.png: not a recognised"
        " image format"
    ), said
    assert "Traceback" not in log


async def _scripted_server(modes: list[str]) -> Any:
    """A stand-in for the server behind the page, answering POST /predict as `modes` says, in
    turn (then "ok"): "html" (a sign-in page a proxy answers 200), "502", "slow" (ok after a
    second); a file named bad* is refused (422) wherever it is."""
    from importlib import resources

    from aiohttp import web

    page = (resources.files("visionpipe") / "serve_page.html").read_text()
    info = {"model": "m.onnx", "md5": "0" * 32, "classes": ["cat", "dog"], "image_size": 16}
    info |= {"max_images_per_request": 256, "max_upload_bytes": 10 << 20}

    async def predict(request: web.Request) -> web.StreamResponse:
        names = []
        async for part in await request.multipart():
            names.append(part.filename)
            await part.read()
        mode = modes.pop(0) if modes else "ok"
        if mode == "html":
            return web.Response(text="<html>sign in</html>", content_type="text/html")
        if mode == "502":
            return web.Response(status=502, text="bad gateway")
        if mode == "json401":  # a gateway's JSON error, an object
            return web.json_response({"error": {"code": 401, "message": "sign in"}}, status=401)
        if mode == "json403":  # an API gateway's words, under `message`
            return web.json_response({"message": "Missing Authentication Token"}, status=403)
        if mode == "slow":
            await asyncio.sleep(1)
        bad = [i for i, n in enumerate(names) if n.startswith("bad")]
        if bad:
            problems = [{"file": names[i], "index": i, "error": "not an image"} for i in bad]
            return web.json_response({"error": "refused", "problems": problems}, status=422)
        top = [{"class": "cat", "probability": 0.75}, {"class": "dog", "probability": 0.25}]
        return web.json_response({"predictions": [{"file": n, "top": top} for n in names]})

    async def index(_: web.Request) -> web.StreamResponse:
        return web.Response(text=page, content_type="text/html")

    async def model(_: web.Request) -> web.StreamResponse:
        return web.json_response(info)

    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/model", model)
    app.router.add_post("/predict", predict)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    return runner, sock.getsockname()[1]


async def _page_against_a_script(debug_port: int, photos: dict[str, Path]) -> list[Any]:
    modes: list[str] = []
    runner, port = await _scripted_server(modes)
    status = "document.getElementById('status')"
    said = []
    try:
        async with _page_tools(debug_port) as tools:
            # A 200 that is no answer of the server's (an expired sign-in): an error, not a
            # page stuck on "classifying".
            modes += ["html"]
            await _choose(tools, f"http://127.0.0.1:{port}/", [photos["a"], photos["b"]], 0)
            said.append(
                await tools.wait_for(f"{status}.className === 'error' && {status}.textContent")
            )
            # A proxy's passing 502: sent once more.
            modes += ["502"]
            await _choose(tools, f"http://127.0.0.1:{port}/", [photos["c"]], 1)
            said.append(
                await tools.wait_for(
                    f"{status}.textContent.includes('classified') && {status}.textContent"
                )
            )
            # A second drop while the first is answered slowly: each in turn, the second's refusal
            # kept in the list.
            modes += ["slow"]
            root = (await tools.send("DOM.getDocument"))["root"]["nodeId"]
            node = (await tools.send("DOM.querySelector", nodeId=root, selector="#file"))["nodeId"]
            for name in ("d", "bad"):
                await tools.send("DOM.setFileInputFiles", nodeId=node, files=[str(photos[name])])
            said.append(
                await tools.wait_for(
                    f"{status}.textContent.includes('nothing was') && {status}.textContent"
                )
            )
            said.append(
                json.loads(
                    await tools.evaluate(
                        "JSON.stringify([...document.querySelectorAll('#results li')]"
                        ".map(li => [li.className, li.dataset.file]))"
                    )
                )
            )
            # A gateway's error as an object: said as text, and the next drop still taken.
            modes += ["json401", "ok", "json403"]
            for name in ("e", "f", "g"):
                await tools.send("DOM.setFileInputFiles", nodeId=node, files=[str(photos[name])])
            said.append(
                await tools.wait_for(
                    "[...document.querySelectorAll('#results li')].length === 6"
                    " && [...document.querySelectorAll('#results li')].map(li => li.textContent)"
                    ".slice(0, 3).join(' | ')"
                )
            )
            said.append(tools.errors)
    finally:
        await runner.cleanup()
    return said


def test_the_page_meets_a_proxy_s_page_a_passing_502_and_a_drop_during_a_drop(
    tmp_path: Path,
) -> None:
    photos = {}
    for name in ("a", "b", "c", "d", "bad", "e", "f", "g"):
        photos[name] = tmp_path / f"{name}.png"
        Image.new("RGB", (20, 20), "red").save(photos[name])
    chromium, port = start_chromium(tmp_path / "profile")
    try:
        html, retried, second, listed, gateway, js_errors = asyncio.run(
            _page_against_a_script(port, photos)
        )
    finally:
        chromium.terminate()
        chromium.wait(timeout=30)
    assert not js_errors, js_errors
    assert html == "error: 2 photos: 200 OK: not the server's answer; nothing was classified"
    assert retried == "1 image classified, newest at the top"
    assert second == "error: bad.png: not an image; nothing was classified"
    # Since the last page load: c.png's answer, then d.png's, then bad.png's refusal on top.
    assert listed == [["refused", "bad.png"], ["prediction", "d.png"], ["prediction", "c.png"]]
    refused_g, answered_f, refused_e = gateway.split(" | ")
    assert refused_g == "g.png: not classified: Missing Authentication Token", gateway
    assert answered_f.startswith("f.png"), gateway
    assert refused_e == 'e.png: not classified: {"code":401,"message":"sign in"}', gateway
