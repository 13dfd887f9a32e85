"""`visionpipe serve`: a real server on a loopback port answering what `visionpipe predict`
answers, sharing model calls between concurrent requests, and refusing bad input with a 4xx and a
JSON error while it stays up."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gzip
import hashlib
import io
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from tests.helpers import DOG_PNG, ROOT, env
from tests.serving import Served, post_files, post_image, request, serve
from tests.tiny_onnx import CLASSES, write_tiny_onnx
from visionpipe import serve_access
from visionpipe.cli import _origin, main

UPLOAD_LIMIT_MB = 1  # the test server's --max-upload-mb
WAIT_MS = 20  # the test server's --batch-wait-ms: concurrent requests surely meet in one call


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def photos(folder: Path) -> dict[str, Path]:
    """Images in the modes and formats users bring, each of a different colour and size."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated: the decode must apply it, as predict does
    files = {}
    for i, (mode, fmt, ext, extra) in enumerate(
        [
            ("RGB", "JPEG", "jpg", {}),
            ("RGB", "JPEG", "jpg", {"exif": exif.tobytes()}),
            ("RGBA", "PNG", "png", {}),
            ("L", "PNG", "png", {}),
            ("P", "GIF", "gif", {}),
            ("CMYK", "JPEG", "jpg", {}),
            ("RGB", "WEBP", "webp", {}),
            ("RGB", "BMP", "bmp", {}),
        ]
    ):
        arr = rng.integers(0, 120, (30 + 9 * i, 20 + 5 * i, 3), dtype=np.uint8)
        arr[..., i % 3] += 100
        path = folder / f"img{i}.{ext}"
        path.write_bytes(_encode(Image.fromarray(arr).convert(mode), fmt, **extra))
        files[path.name] = path
    if DOG_PNG.is_file():
        files["dog.png"] = DOG_PNG
    return files


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_onnx(tmp_path_factory.mktemp("serve") / "model.onnx")


@pytest.fixture(scope="module")
def server(model: Path) -> Iterator[Served]:
    options = ("--max-upload-mb", str(UPLOAD_LIMIT_MB), "--batch-wait-ms", str(WAIT_MS))
    with serve(model, model.parent / "server.log", *options) as served:
        yield served
    # Nothing, bad input included, may have been logged as a traceback.
    assert "Traceback" not in served.log_text(), served.log_text()


def cli_predictions(files: list[Path], model: Path, tmp: Path, topk: int = 3) -> list[dict]:
    out = tmp / f"cli-{len(files)}-{topk}.json"
    specs = [str(f) for f in files]
    args = ["predict", *specs, "--model", str(model), "--topk", str(topk), "--json", str(out)]
    assert main(args) == 0
    # An upload has no folder: serve's answers are predict's without the folder class.
    return [
        {k: v for k, v in p.items() if k != "folder_class"} for p in json.loads(out.read_text())
    ]


def test_model_names_the_state_dict_an_export_came_from(tmp_path: Path, model: Path) -> None:
    import onnx

    proto = onnx.load(str(model))
    onnx.helper.set_model_props(
        proto, {**{p.key: p.value for p in proto.metadata_props}, "state_dict_md5": "ab" * 16}
    )
    onnx.save(proto, str(tmp_path / "model.onnx"))
    with serve(tmp_path / "model.onnx", tmp_path / "server.log") as served:
        status, info = request(f"{served.url}/model")
    assert status == 200 and info["state_dict_md5"] == "ab" * 16


def test_health_and_model_describe_the_service(server: Served, model: Path) -> None:
    status, health = request(f"{server.url}/health")
    assert status == 200 and health["status"] == "ok", health
    status, info = request(f"{server.url}/model")
    assert status == 200
    assert info["classes"] == CLASSES and info["image_size"] == 16
    assert info["md5"] == hashlib.md5(model.read_bytes()).hexdigest()  # as dvc.lock records it
    assert info["state_dict_md5"] is None  # a model without it in its metadata
    assert info["max_upload_bytes"] == UPLOAD_LIMIT_MB * 2**20
    assert info["batch_wait_ms"] == WAIT_MS
    assert (info["read_timeout_s"], info["keepalive_s"]) == (30, 75)


def test_answers_are_the_cli_numbers(server: Served, model: Path, tmp_path: Path) -> None:
    files = sorted(photos(tmp_path / "photos").values())
    # One file per CLI run and per raw POST: both a model call of one image.
    for path in files:
        (want,) = cli_predictions([path], model, tmp_path)
        status, got = post_image(f"{server.url}/predict?name={path.name}", path.read_bytes())
        assert status == 200, got
        assert got["predictions"] == [{**want, "file": path.name}], path.name
    # All files in one CLI run and in one multipart POST: both one call of all the images.
    want_all = cli_predictions(files, model, tmp_path, topk=2)
    status, got = post_files(
        f"{server.url}/predict?topk=2", [(p.name, p.read_bytes()) for p in files]
    )
    assert status == 200, got
    named = [{**w, "file": p.name} for w, p in zip(want_all, files, strict=True)]
    assert got["predictions"] == named
    assert {p["top"][0]["class"] for p in got["predictions"]} == set(CLASSES)


def test_a_diverged_model_s_answers_are_strict_json_with_null_probabilities(
    tmp_path: Path,
) -> None:
    # NaN is not JSON: the page's JSON.parse (and jq, and strict parsers) refuse a bare NaN.
    model = write_tiny_onnx(tmp_path / "model.onnx", diverged=True)
    image = next(iter(photos(tmp_path / "photos").values()))
    (want,) = cli_predictions([image], model, tmp_path)
    with serve(model, tmp_path / "server.log") as served:
        req = urllib.request.Request(
            f"{served.url}/predict?name={image.name}",
            image.read_bytes(),
            {"Content-Type": "image/png"},
        )
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req) as resp:
            body = resp.read().decode()

    def refuse(constant: str) -> None:
        raise AssertionError(f"/predict answered {constant}, which is not JSON: {body}")

    answer = json.loads(body, parse_constant=refuse)
    assert answer["predictions"] == [{**want, "file": image.name}]
    assert [t["probability"] for t in want["top"]] == [None] * 3
    # It served, but said at its start what it serves: /health's "ok" is the process's.
    assert "gives non-finite outputs (NaN) for a grey image" in served.log.read_text()


def test_concurrent_requests_share_model_calls(server: Served, tmp_path: Path) -> None:
    files = sorted(photos(tmp_path / "photos").values())
    single = {p.name: post_image(f"{server.url}/predict", p.read_bytes())[1] for p in files}
    before = request(f"{server.url}/health")[1]
    start = threading.Barrier(len(files))

    def ask(path: Path) -> dict:
        start.wait()
        status, body = post_image(f"{server.url}/predict", path.read_bytes())
        assert status == 200, body
        return body["predictions"][0]

    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
        answers = dict(zip([p.name for p in files], pool.map(ask, files), strict=True))
    after = request(f"{server.url}/health")[1]
    for name, got in answers.items():
        alone = single[name]["predictions"][0]
        # Each request gets its own rows back, whichever call it shared.
        assert [t["class"] for t in got["top"]] == [t["class"] for t in alone["top"]], name
        for a, b in zip(got["top"], alone["top"], strict=True):
            assert abs(a["probability"] - b["probability"]) <= 2e-6, name
    assert after["requests"] - before["requests"] == len(files)
    assert after["images"] - before["images"] == len(files)
    assert after["model_calls"] - before["model_calls"] < len(files), (before, after)
    assert after["largest_call"] > 1


def _bomb() -> bytes:
    # 10000x10000 one-bit pixels: 12 KB of PNG that would decode to 300 MB of RGB.
    return _encode(Image.new("1", (10000, 10000)), "PNG")


def _jpeg() -> bytes:
    return _encode(Image.new("RGB", (64, 48), (200, 30, 30)), "JPEG")


def _form(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    from tests.serving import multipart

    return multipart(files)


BIG = b"\0" * (UPLOAD_LIMIT_MB * 2**20 + 1)
PNG = "image/png"
# name: (Content-Type, body, status, words the error must hold)
BAD_INPUT = {
    "not an image": (PNG, b"hello, this is text", 422, "not a recognised image format"),
    "truncated jpeg": (PNG, _jpeg()[:300], 422, "cannot decode"),
    "truncated png": (
        PNG,
        _encode(Image.new("RGB", (64, 64), (1, 2, 3)), "PNG")[:80],
        422,
        "cannot decode",
    ),
    "decompression bomb": (PNG, _bomb(), 422, "10000x10000 (100,000,000 pixels), above"),
    "empty body": (PNG, b"", 400, "empty request body"),
    "too large": (PNG, BIG, 413, "above the 1,048,576-byte upload limit"),
    "text type": ("text/plain", _jpeg(), 415, "unsupported Content-Type 'text/plain'"),
    "json type": ("application/json", b"{}", 415, "unsupported Content-Type 'application/json'"),
    "form type": ("application/x-www-form-urlencoded", b"a=1", 415, "multipart/form-data"),
    "malformed form": ("multipart/form-data; boundary=xyz", b"junk", 400, "malformed multipart"),
    # A client that writes a file name's line break raw (curl and browsers send %0A).
    "raw line break in a file name": (
        "multipart/form-data; boundary=xyz",
        b'--xyz\r\nContent-Disposition: form-data; name="f"; filename="new\nline.jpg"\r\n\r\n'
        b"data\r\n--xyz--\r\n",
        400,
        "malformed multipart body: Invalid HTTP header",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_gets_a_4xx_naming_it(server: Served, case: str) -> None:
    content_type, body, status, words = BAD_INPUT[case]
    before = request(f"{server.url}/health")[1]
    got_status, got = request(f"{server.url}/predict", body, {"Content-Type": content_type})
    assert (got_status, set(got)) >= (status, {"error"}) and words in got["error"], (case, got)
    assert got_status == status, got
    after = request(f"{server.url}/health")[1]
    assert after["status"] == "ok" and after["refused"] == before["refused"] + 1, after
    assert after["requests"] == before["requests"], after


def test_every_address_prints_a_url_a_browser_opens(model: Path, tmp_path: Path) -> None:
    # Browsers refuse http://0.0.0.0/; the line names the loopback URL, which answers.
    with serve(model, tmp_path / "serve.log", "--host", "0.0.0.0") as served:
        assert served.url.startswith("http://127.0.0.1:"), served.url
        assert request(f"{served.url}/health")[0] == 200


@pytest.mark.skipif(not socket.has_dualstack_ipv6(), reason="needs IPv6 sockets that take IPv4")
def test_every_address_of_ipv6_is_ipv4_s_too(model: Path, tmp_path: Path) -> None:
    # `::` means every address, as on most servers: curl http://127.0.0.1:PORT/ answers too.
    with serve(model, tmp_path / "serve.log", "--host", "::") as served:
        port = served.url.rsplit(":", 1)[1]
        assert served.url == f"http://127.0.0.1:{port}", served.url
        assert request(f"{served.url}/health")[0] == 200
        assert request(f"http://[::1]:{port}/health")[0] == 200


def test_a_name_of_two_addresses_listens_on_one_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # `localhost` is 127.0.0.1 and ::1 on many systems; --port 0 must not give each its own.
    from visionpipe.serve import _address_text, listening_sockets

    def both(host: str, port: int, **kw: object) -> list:
        v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))
        return [v4, (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", both)
    try:
        sockets = listening_sockets("localhost", 0)
    except OSError as exc:  # a machine without IPv6
        pytest.skip(f"cannot bind ::1: {exc}")
    with sockets[0], sockets[1]:
        port = sockets[0].getsockname()[1]
        assert [s.getsockname()[:2] for s in sockets] == [("127.0.0.1", port), ("::1", port)]
        assert _address_text(sockets) == f"http://127.0.0.1:{port}/ and http://[::1]:{port}/ "


def test_one_image_above_the_pixel_limit_is_refused_as_predict_refuses_it(
    server: Served,
) -> None:
    """Not as a request of too many pixels to send in several: halving gives the same."""
    huge = _encode(Image.new("1", (20000, 15000)), "PNG")  # 300 MP, above a request's 256
    body, content_type = _form([("huge.png", huge)])
    status, got = request(f"{server.url}/predict", body, {"Content-Type": content_type})
    assert status == 422, got
    assert got["error"].startswith("huge.png: image is 20000x15000 (300,000,000 pixels)"), got
    assert "downscale it first" in got["error"] and "send them in several" not in got["error"]


def test_a_form_names_each_bad_file_and_predicts_nothing(server: Served) -> None:
    body, content_type = _form(
        [("good.jpg", _jpeg()), ("notes.png", b"text"), ("empty.jpg", b""), ("bomb.png", _bomb())]
    )
    status, got = request(f"{server.url}/predict", body, {"Content-Type": content_type})
    assert status == 422, got
    assert got["error"].startswith("notes.png: not a recognised image format (and 2 more)")
    assert [(p["file"], p["index"]) for p in got["problems"]] == [
        ("notes.png", 1),
        ("empty.jpg", 2),
        ("bomb.png", 3),
    ]
    assert "empty file" in got["problems"][1]["error"]
    body, content_type = _form([("a.bin", BIG)])
    status, got = request(f"{server.url}/predict", body, {"Content-Type": content_type})
    assert status == 413 and "upload limit" in got["error"], got
    body, content_type = _form([(f"{i}.png", b"") for i in range(257)])
    status, got = request(f"{server.url}/predict", body, {"Content-Type": content_type})
    assert status == 413 and "more than 256 images" in got["error"], got
    # 256 images, then a text field (a CSRF token) and a file input left empty: not images.
    body, content_type = _form([(f"{i}.png", b"") for i in range(256)])
    end = f"--{content_type.split('boundary=')[1]}"
    head = f'{end}\r\nContent-Disposition: form-data; name="{{}}"{{}}\r\n\r\n'
    tail = head.format("csrf", "") + "tok\r\n" + head.format("more", '; filename=""') + "\r\n"
    body = body.replace(f"{end}--".encode(), f"{tail}{end}--".encode())
    status, got = request(f"{server.url}/predict", body, {"Content-Type": content_type})
    assert status == 422 and "empty file" in got["problems"][0]["error"], got
    # Five images each under the pixel limit, each a few KB: 320 megapixels to decode in all.
    just_under = _encode(Image.new("1", (7999, 7999)), "PNG")
    body, content_type = _form([(f"{i}.png", just_under) for i in range(5)])
    status, got = request(f"{server.url}/predict", body, {"Content-Type": content_type})
    assert status == 413, got
    said = "the 5 images of this request hold 319,920,005 pixels, above the 256,000,000"
    assert said in got["error"], got
    # Six 48-MP camera JPEGs (under a raised --max-upload-mb) decode at an eighth of their
    # sides for the model: 288 MP as stored, 4.5 MP as decoded, no refusal.
    from visionpipe.serve import Upload, decode_uploads

    photo = _encode(Image.new("RGB", (8000, 6000), (90, 120, 60)), "JPEG")
    assert len(decode_uploads([Upload(f"{i}.jpg", photo) for i in range(6)], 32)) == 6
    empty_form = b"--xyz--\r\n"
    status, got = request(
        f"{server.url}/predict", empty_form, {"Content-Type": "multipart/form-data; boundary=xyz"}
    )
    assert status == 400 and "holds no files" in got["error"], got


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_body_that_is_not_its_content_encoding_gets_a_400(server: Served, encoding: str) -> None:
    jpeg = _jpeg()
    packed = gzip.compress(jpeg) if encoding == "gzip" else zlib.compress(jpeg)
    headers = {"Content-Type": "image/jpeg", "Content-Encoding": encoding}
    status, got = request(f"{server.url}/predict", packed, headers)
    assert status == 200, got
    plain = request(f"{server.url}/predict", jpeg, {"Content-Type": "image/jpeg"})[1]
    assert got["predictions"][0]["top"] == plain["predictions"][0]["top"]
    for body, kind in [(jpeg, "image/jpeg"), _form([("dog.jpg", jpeg)])]:
        before = request(f"{server.url}/health")[1]["refused"]
        status, got = request(f"{server.url}/predict", body, {**headers, "Content-Type": kind})
        assert status == 400, got
        assert f"the request body is not valid {encoding} data" in got["error"], got
        assert request(f"{server.url}/health")[1]["refused"] == before + 1
    # Codings aiohttp passes on undecoded: refused by name, not read as a gzip archive.
    for other in ("x-gzip", "gzip, gzip"):
        headers = {"Content-Type": "image/jpeg", "Content-Encoding": other}
        status, got = request(f"{server.url}/predict", packed, headers)
        assert status == 415 and f"unsupported Content-Encoding {other!r}" in got["error"], got


def test_an_encoding_without_its_decoder_is_aiohttp_s_400_and_no_traceback(
    server: Served,
) -> None:
    # br and zstd need packages aiohttp leaves optional: it answers in plain text, not a bug.
    req = urllib.request.Request(
        f"{server.url}/predict",
        data=b"not brotli",
        headers={"Content-Type": "image/png", "Content-Encoding": "br"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with pytest.raises(urllib.error.HTTPError) as answer:
        opener.open(req, timeout=30)
    assert answer.value.code == 400
    time.sleep(0.2)  # aiohttp logs after it has answered
    assert "Traceback" not in server.log_text(), server.log_text()


def test_a_request_aiohttp_cannot_parse_logs_no_traceback(server: Served) -> None:
    # A header too long, a length beside a chunked body: aiohttp answers 400 itself; each logged
    # as a traceback would be ten lines of "bug" per request a sloppy client sends.
    host, port = server.url.removeprefix("http://").split(":")
    heads = [
        f"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 9000}\r\n\r\n",
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ]
    for head in heads:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head.encode())
            assert b" 400 " in sock.recv(100).split(b"\r\n")[0], head[:40]
    time.sleep(0.2)  # aiohttp logs after it has answered
    assert "Traceback" not in server.log_text(), server.log_text()


def _field(boundary: str, disposition: str, data: bytes, content_type: str | None = None) -> bytes:
    head = f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n"
    head += f"Content-Type: {content_type}\r\n" if content_type else ""
    return head.encode() + b"\r\n" + data + b"\r\n"


def test_a_form_s_text_fields_are_not_images(server: Served) -> None:
    # As curl -F file=@dog.jpg -F name=abc -F note=... sends it: text fields have no file name
    # and no Content-Type (or text/plain); a part of bytes without a file name is still a file.
    b = "fieldsboundary"
    body = (
        b"".join(
            [
                _field(b, 'name="name"', b"abc"),
                _field(b, 'name="file"; filename="dog.jpg"', _jpeg(), "image/jpeg"),
                _field(b, 'name="note"', "été".encode(), "text/plain; charset=utf-8"),
                _field(b, 'name="raw"', _jpeg(), "application/octet-stream"),
                # Spring's @RequestPart and axios send a JSON part beside the file; a browser's
                # FormData sends a JSON Blob as a file named "blob".
                _field(b, 'name="meta"', b'{"user": 1}', "application/json"),
                _field(b, 'name="more"; filename="blob"', b'{"user": 1}', "application/json"),
            ]
        )
        + f"--{b}--\r\n".encode()
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={b}"}
    status, got = request(f"{server.url}/predict", body, headers)
    assert status == 200, got
    assert [p["file"] for p in got["predictions"]] == ["dog.jpg", "raw"]
    body = _field(b, 'name="name"', b"abc") + _field(b, 'name="file"', b"photo.jpg")
    status, got = request(f"{server.url}/predict", body + f"--{b}--\r\n".encode(), headers)
    assert status == 400, got
    assert "holds no files, only the text field(s) 'name', 'file'" in got["error"], got
    assert "curl -F file=@photo.jpg" in got["error"]


def test_a_file_input_left_empty_is_no_file(server: Served) -> None:
    # A browser submits an HTML form's file input with nothing chosen as a part of no bytes and
    # an empty file name: not an empty image that fails the files chosen beside it.
    b = "emptyinput"
    chosen = _field(b, 'name="photo"; filename="ant.jpg"', _jpeg(), "image/jpeg")
    empty = _field(b, 'name="other"; filename=""', b"", "application/octet-stream")
    end = f"--{b}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={b}"}
    status, got = request(f"{server.url}/predict", chosen + empty + end, headers)
    assert status == 200 and [p["file"] for p in got["predictions"]] == ["ant.jpg"], got
    status, got = request(f"{server.url}/predict", empty + end, headers)
    assert status == 400 and "the form holds no files;" in got["error"], got


@pytest.mark.parametrize(
    ("path", "data", "status", "words"),
    [
        ("/predict?topk=0", _jpeg(), 400, "topk must be a whole number from 1 to 3; got '0'"),
        ("/predict?topk=x", _jpeg(), 400, "got 'x'"),
        ("/predict?topk=%C2%B2", _jpeg(), 400, "got '²'"),  # a digit to str.isdigit, not to int
        # Taken by int() but no whole number as written: 1_0, a leading space, Arabic-Indic 2.
        *((f"/predict?topk={k}", _jpeg(), 400, "from 1 to 3") for k in ("1_0", "%202", "%D9%A2")),
        ("/predict?topk=" + "9" * 5000, _jpeg(), 400, "from 1 to 3"),
        ("/predict", None, 405, "GET is not allowed on /predict"),
        ("/nowhere", None, 404, "no endpoint /nowhere; the endpoints are"),
    ],
)
def test_wrong_requests_get_json_errors(
    server: Served, path: str, data: bytes | None, status: int, words: str
) -> None:
    got_status, got = request(f"{server.url}{path}", data, {"Content-Type": "image/jpeg"})
    assert got_status == status and words in got["error"], got


def test_a_connect_request_is_named_by_its_target(server: Served) -> None:
    # A proxy's CONNECT has an address for its target, no path.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        answer = sock.recv(4000).decode()
    assert answer.startswith("HTTP/1.1 404"), answer
    assert f"no endpoint CONNECT {host}:{port}; the endpoints are" in answer, answer


def test_a_405_names_the_methods_the_path_takes(server: Served) -> None:
    for method, path, allow in [("GET", "/predict", "POST"), ("DELETE", "/health", "GET,HEAD")]:
        status, headers, got = _cors(f"{server.url}{path}", method, {}, with_headers=("Allow",))
        assert status == 405 and "is not allowed on" in got["error"], got
        assert set(headers["Allow"].split(",")) == set(allow.split(",")), headers
    status, _, got = _cors(f"{server.url}/predict", "PUT", {}, _jpeg(), with_headers=("Allow",))
    assert status == 405 and got["error"].endswith("POST /predict (curl -T: add -X POST)"), got


def _upload_head(host: str) -> str:
    """The head of a 100,000-byte image upload, for clients that stop sending midway."""
    return (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
        "Content-Length: 100000\r\n\r\n"
    )


def test_a_client_that_hangs_up_mid_upload_leaves_the_server_up(server: Served) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    head = _upload_head(host)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + _jpeg()[:500])
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        assert sock.recv(100).split(b" ")[1] == b"400"  # aiohttp answers it before any handler
    status, got = post_image(f"{server.url}/predict", _jpeg(), "image/jpeg")
    assert status == 200 and got["predictions"][0]["top"][0]["class"] == "cat", got


def test_sigterm_mid_upload_stops_within_docker_s_grace(model: Path, tmp_path: Path) -> None:
    # docker stop and Kubernetes send SIGTERM, then SIGKILL after 10 s (30 s): the server must
    # be gone, its port free, before then, even with a client that is still sending its image.
    with serve(model, tmp_path / "server.log") as served:
        host, port = served.url.removeprefix("http://").split(":")
        head = _upload_head(host)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head.encode() + _jpeg()[:500])
            time.sleep(0.3)  # the handler is reading the body
            start = time.monotonic()
            served.proc.send_signal(signal.SIGTERM)
            code = served.proc.wait(timeout=30)
            took = time.monotonic() - start
    assert code == 0 and took < 8, (code, took, served.log_text())
    with socket.socket() as again:  # as a restarted server binds it (aiohttp sets SO_REUSEADDR)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind((host, int(port)))


@contextlib.contextmanager
def _stalled_upload(served: Served) -> Iterator[None]:
    """An upload that stops sending halfway, open for the block: a request in progress."""
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(_upload_head(host).encode() + _jpeg()[:500])
        time.sleep(0.3)
        yield


def test_a_second_stop_signal_stops_at_once_and_each_says_so(model: Path, tmp_path: Path) -> None:
    # The first answers the requests in progress (seconds), saying so; a second, as one who
    # presses Ctrl-C again means, exits now.
    with serve(model, tmp_path / "server.log") as served, _stalled_upload(served):
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        # The same signal again at once is the first one passed on (`uv run` forwards what the
        # process group got): still the one stop, answering the upload.
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(0.4)
        assert served.proc.poll() is None, served.log_text()
        time.sleep(0.7)
        start = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        code = served.proc.wait(timeout=30)
        took = time.monotonic() - start
    log = served.log_text()
    assert code == 143 and took < 2, (code, took, log)
    assert "SIGTERM: stopping, answering the 1 request in progress first (up to 5 s" in log, log
    assert "SIGTERM again: stopping now, 1 request unanswered" in log, log


@pytest.mark.parametrize("terminal", [True, False])
def test_a_quick_second_sigint_stops_at_once_only_where_it_was_typed(
    model: Path, tmp_path: Path, terminal: bool
) -> None:
    # In a terminal a typed Ctrl-C reaches the process once (uv there passes SIGINT on to no
    # one): a second one, however quick, is the user's. With none (a supervisor's stopsignal=INT,
    # systemd's KillSignal), `uv run` passes the group's SIGINT on: twice at once is one stop.
    with (
        serve(model, tmp_path / "server.log", terminal=terminal) as served,
        _stalled_upload(served),
    ):
        served.proc.send_signal(signal.SIGINT)
        time.sleep(0.1)
        served.proc.send_signal(signal.SIGINT)
        code = served.proc.wait(timeout=30)
    again = "Ctrl-C again: stopping now, 1 request unanswered" in served.log_text()
    assert (code, again) == ((130, True) if terminal else (0, False)), served.log_text()


def test_a_ctrl_c_counts_as_typed_only_in_the_terminal_s_foreground_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A job sent to the background (`&`), `timeout`'s own group or a service: a SIGINT to its
    # group is no key press, and `uv run` passes it on, so a second at once is the same one.
    import os

    from visionpipe import serve

    opened: list[int] = []

    def fake_tty(path: str, flags: int) -> int:
        assert path == "/dev/tty"
        opened.append(os.dup(0))
        return opened[-1]

    monkeypatch.setattr(os, "open", fake_tty)
    for foreground, typed in ((os.getpgrp(), True), (os.getpgrp() + 1, False)):
        monkeypatch.setattr(os, "tcgetpgrp", lambda fd, pgrp=foreground: pgrp)
        assert serve._in_foreground() is typed

    def no_tty(path: str, flags: int) -> int:
        raise OSError(6, "No such device or address")  # ENXIO

    monkeypatch.setattr(os, "open", no_tty)
    assert serve._in_foreground() is False  # no controlling terminal at all
    monkeypatch.delattr(os, "tcgetpgrp")
    assert serve._in_foreground() is True  # Windows: no groups to ask, as in a console


def test_sighup_stops_as_sigterm_does(model: Path, tmp_path: Path) -> None:
    # A closed terminal or a supervisor's HUP: the requests in progress are answered, as for
    # SIGTERM, and the server says it stopped; Python's default would drop them on the spot.
    with serve(model, tmp_path / "server.log") as served:
        served.proc.send_signal(signal.SIGHUP)
        code = served.proc.wait(timeout=30)
    assert code == 0, served.log_text()


def test_a_stop_lets_an_upload_in_progress_finish_and_answers_it(
    model: Path, tmp_path: Path
) -> None:
    # A rolling restart's SIGTERM while a photo is on its way: the client still gets its answer,
    # and a new client is refused (no new connections), not queued behind the stop.
    image = _jpeg()
    with serve(model, tmp_path / "server.log") as served:
        host, port = served.url.removeprefix("http://").split(":")
        head = (
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(image)}\r\n\r\n"
        )
        probe = socket.create_connection((host, int(port)), timeout=30)  # a balancer's, open
        with probe, socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(head.encode() + image[:100])
            time.sleep(0.3)  # the handler is reading the body
            served.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((host, int(port)), timeout=5).close()
            probe.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            health = probe.makefile("rb").read()  # the answer closes the connection
            assert health.startswith(b"HTTP/1.1 503") and b'"stopping"' in health, health
            sock.sendall(image[100:])
            answer = sock.makefile("rb").read()  # to the end: the server closes after answering
        code = served.proc.wait(timeout=30)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 200"), answer[:300]
    assert json.loads(body)["predictions"][0]["top"][0]["class"] == "cat", body
    assert code == 0, served.log_text()


def _cors(
    url: str,
    method: str,
    headers: dict[str, str],
    data: bytes | None = None,
    with_headers: tuple[str, ...] = ("Access-Control", "Vary"),
) -> tuple:
    """(status, the response's headers that start with one of `with_headers`, JSON or None)."""
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        resp = opener.open(req, timeout=10)
    except urllib.error.HTTPError as exc:
        resp = exc
    with resp:
        body = resp.read()
        cors = {k: v for k, v in resp.headers.items() if k.startswith(with_headers)}
        return resp.status, cors, json.loads(body) if body else None


PAGE = "http://localhost:3000"  # a page on another origin, as a web app's dev server serves it
PREFLIGHT = {  # what a browser asks before fetch() POSTs an image/jpeg body
    "Origin": PAGE,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type",
}


def test_pages_of_allowed_origins_can_call_it_from_a_browser(model: Path, tmp_path: Path) -> None:
    # The option as typed, in capitals: browsers send the origin in lower case.
    with serve(model, tmp_path / "server.log", "--allow-origin", "HTTP://LocalHost:3000") as served:
        status, cors, _ = _cors(f"{served.url}/predict", "OPTIONS", PREFLIGHT)
        assert status == 204, cors
        assert cors["Access-Control-Allow-Origin"] == PAGE
        assert "POST" in cors["Access-Control-Allow-Methods"]
        assert cors["Access-Control-Allow-Headers"] == "content-type"
        headers = {"Origin": PAGE, "Content-Type": "image/jpeg"}
        status, cors, got = _cors(f"{served.url}/predict", "POST", headers, _jpeg())
        assert status == 200 and got["predictions"], got
        assert cors == {"Access-Control-Allow-Origin": PAGE, "Vary": "Origin"}
        # Errors too: the page can show why its request was refused.
        headers["Content-Type"] = "text/plain"
        status, cors, got = _cors(f"{served.url}/predict", "POST", headers, b"x")
        assert status == 415 and cors["Access-Control-Allow-Origin"] == PAGE, got
        # A refusal of an Expect: 100-continue head, answered before the body is sent.
        host, port = served.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                f"POST /predict HTTP/1.1\r\nHost: {host}\r\nOrigin: {PAGE}\r\n"
                "Content-Type: text/plain\r\nContent-Length: 9\r\n"
                "Expect: 100-continue\r\n\r\n".encode()
            )
            status, expect_headers, got = _read_answer(sock)
        assert status == 415 and expect_headers["Access-Control-Allow-Origin"] == PAGE, got
        other = {**PREFLIGHT, "Origin": "http://elsewhere.example"}
        status, cors, got = _cors(f"{served.url}/predict", "OPTIONS", other)
        assert status == 403 and "Access-Control-Allow-Origin" not in cors, cors
        assert "(allowed origins: http://localhost:3000)" in got["error"]
        # An answer without the header says it varies too: a cache must not give it to the page.
        for asking in ({}, {"Origin": "http://elsewhere.example"}):
            status, cors, _ = _cors(f"{served.url}/model", "GET", asking)
            assert status == 200 and cors == {"Vary": "Origin"}, cors
        # A public page calling this machine's address: Chrome's Private Network Access asks
        # first, and a page named gets it.
        private = {**PREFLIGHT, "Access-Control-Request-Private-Network": "true"}
        status, cors, _ = _cors(f"{served.url}/predict", "OPTIONS", private)
        assert status == 204 and cors["Access-Control-Allow-Private-Network"] == "true", cors
    with serve(model, tmp_path / "any.log", "--allow-origin", "*") as served:
        status, cors, _ = _cors(f"{served.url}/model", "GET", {"Origin": "http://a.example"})
        assert status == 200 and cors["Access-Control-Allow-Origin"] == "*"
        # '*' grants no public website access to this machine's address: it is not a name.
        asking = {**private, "Origin": "https://any-website.example"}
        status, cors, _ = _cors(f"{served.url}/predict", "OPTIONS", asking)
        assert status == 204 and "Access-Control-Allow-Private-Network" not in cors, cors


def test_other_origins_are_told_the_option(server: Served, model: Path) -> None:
    status, cors, got = _cors(f"{server.url}/predict", "OPTIONS", PREFLIGHT)
    assert status == 403 and not cors, cors
    assert got["error"] == (
        "pages of http://localhost:3000 may not call this server (allowed origins: none); "
        "start it with --allow-origin http://localhost:3000"
    )
    status, cors, got = _cors(f"{server.url}/health", "GET", {"Origin": PAGE})
    assert status == 200 and not cors, cors
    # Not a browser (no Origin): the path's methods, as for any other method it does not take.
    asked = {"Access-Control-Request-Method": "POST"}
    status, cors, got = _cors(f"{server.url}/predict", "OPTIONS", asked)
    assert status == 405 and "OPTIONS is not allowed on /predict" in got["error"], got
    for typed, sent in [
        ("https://Example.com:443", "https://example.com"),
        ("http://localhost:80", "http://localhost"),
        ("http://bücher.example:8080", "http://xn--bcher-kva.example:8080"),
        ("https://straße.de", "https://xn--strae-oqa.de"),  # UTS-46, as the URL standard
        ("http://%41.com", "http://a.com"),
        ("http://web_app:3000", "http://web_app:3000"),  # a Docker Compose service
        ("http://[::1]:3000", "http://[::1]:3000"),
        # The URL standard's IPv6: lower-case hex, the first longest zero run as ::, no IPv4 tail.
        ("http://[::FFFF:127.0.0.1]", "http://[::ffff:7f00:1]"),
        ("http://[2001:DB8:0:0:1:0:0:1]:8080", "http://[2001:db8::1:0:0:1]:8080"),
        ("http://[1:0:0:2:0:0:0:3]", "http://[1:0:0:2::3]"),
    ]:
        assert _origin(typed) == sent
    bad_hosts = ("http://a%2Fb.com", "http://a%3A80.com", "http://[fe80::1%25eth0]", "http://[zz]")
    for bad in (
        *("http://localhost:3000/", "localhost:3000", "http://a.example/app", "http://a:1e6"),
        *bad_hosts,  # a browser refuses these hosts: they would never match
        "https://*.example.com",  # a pattern, as --allow-host takes: no Origin is one
        "https://%2A.example.com",
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "--model", str(model), "--allow-origin", bad])
        assert exit_.value.code == 2


def test_names_come_back_as_they_are_not_as_json_escapes(tmp_path: Path) -> None:
    # A Chinese learner's classes and photo names, as `predict --json` writes them.
    model = write_tiny_onnx(tmp_path / "model.onnx", classes=["猫", "蚂蚁", "蜜蜂"])
    with serve(model, tmp_path / "server.log") as served:
        for path, data, headers in (
            ("/model", None, {}),
            ("/predict?name=狗.png", _jpeg(), {"Content-Type": "image/jpeg"}),
            ("/predict?name=狗.txt", b"not an image", {"Content-Type": "image/jpeg"}),
        ):
            url = served.url + urllib.parse.quote(path, safe="/?=")
            req = urllib.request.Request(url, data=data, headers=headers)
            try:
                resp = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req)
            except urllib.error.HTTPError as exc:
                resp = exc
            with resp:
                body = resp.read().decode("utf-8")
            assert "\\u" not in body and ("蚂蚁" in body or "狗" in body), body


def test_a_name_pointed_at_this_machine_by_a_web_page_is_refused(
    model: Path, tmp_path: Path
) -> None:
    # DNS rebinding: a page of evil.example points its name at 127.0.0.1 and calls the server
    # as its own origin; the request carries the page's name as Host.
    with serve(model, tmp_path / "server.log") as served:
        port = served.url.rsplit(":", 1)[1]
        for _ in range(2):
            status, got = request(f"{served.url}/model", headers={"Host": f"evil.example:{port}"})
            assert status == 403, got
        assert got["error"].endswith("start the server with --allow-host evil.example"), got
        for host in (
            f"localhost:{port}",
            "LocalHost.",
            f"app.localhost:{port}",
            f"127.0.0.1:{port}",
            f"[::1]:{port}",
            f"127.1:{port}",  # curl sends the short form as typed
            socket.gethostname(),
        ):
            status, got = request(f"{served.url}/model", headers={"Host": host})
            assert status == 200, (host, got)
        status, _ = request(f"{served.url}/predict?name=x", _jpeg(), {"Host": "evil.example"})
        assert status == 403
        # No name to allow: no option to allow it with.
        status, got = request(f"{served.url}/model", headers={"Host": f":{port}"})
        assert status == 403 and "--allow-host" not in got["error"], got
    # Once a name in the log, not once a request.
    assert served.log_text().count("refused requests for host 'evil.example") == 1, (
        served.log_text()
    )
    options = ("--allow-host", "Proxy.Example.", "--allow-host", "*.tunnel.example")
    options += ("--allow-host", "пример.рф")
    with serve(model, tmp_path / "proxied.log", *options) as served:
        for host in ("proxy.example", "tunnel.example", "abc.tunnel.example", "пример.рф"):
            status, got = request(
                f"{served.url}/model", headers={"Host": host.encode().decode("latin-1")}
            )
            assert status == 200, (host, got)
        for host in ("other.example", "badtunnel.example", "[::1]evil.example"):
            status, _ = request(f"{served.url}/model", headers={"Host": host})
            assert status == 403, host


def test_this_machine_s_names_are_its_host_name_and_those_etc_hosts_gives_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Debian names the fully qualified name on 127.0.1.1; a Mac answers NAME.local by mDNS.
    hosts = tmp_path / "hosts"
    hosts.write_text(
        "127.0.0.1 localhost\n127.0.1.1 Box.Example.LAN box  # this machine\n"
        "::1 ip6-localhost\n192.0.2.9 elsewhere.example\n# 127.0.0.1 commented.example\n"
    )
    monkeypatch.setattr(serve_access, "HOSTS_FILE", hosts)
    own = socket.gethostname().lower()
    assert serve_access._own_names() == {
        *(own, f"{own}.local", "localhost", "box.example.lan", "box", "ip6-localhost")
    }
    monkeypatch.setattr(serve_access, "HOSTS_FILE", tmp_path / "none")
    assert serve_access._own_names() == {own, f"{own}.local"}
    for bad in ("http://proxy.example", "proxy.example:8080", "a/b", "*example.com", "*.*.a.b"):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "--model", str(model), "--allow-host", bad])
        assert exit_.value.code == 2


@pytest.mark.parametrize(
    ("sockname", "checked"),
    [
        (("127.0.0.1", 8000), True),
        (("::ffff:127.0.0.1", 8000, 0, 0), True),  # a dual-stack socket's IPv4 client
        (("::1", 8000, 0, 0), True),
        (("192.0.2.7", 8000), False),  # another machine's request, by whatever name it knows
        ("/run/serve.sock", False),
    ],
)
def test_only_requests_arriving_on_a_loopback_address_have_their_host_checked(
    sockname: object, checked: bool
) -> None:
    import asyncio
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from visionpipe.serve_access import host_guard

    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name: sockname if name == "sockname" else None
    req = make_mocked_request("GET", "/model", {"Host": "lab-box.example"}, transport=transport)

    async def handler(request: object) -> web.Response:
        return web.Response(text="answered")

    response = asyncio.run(host_guard((), "0.0.0.0")(req, handler))
    assert response.status == (403 if checked else 200)


def test_the_page_is_self_contained(server: Served) -> None:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{server.url}/", timeout=10) as resp:
        assert resp.headers.get_content_type() == "text/html"
        page = resp.read().decode()
    assert 'type="file"' in page and 'fetch("predict"' in page
    assert "http://" not in page and "https://" not in page  # nothing to load from elsewhere


def test_unusable_model_and_address_are_one_line_errors(
    model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["serve", "--model", str(tmp_path / "none.onnx")]) == 2
    # A file of the user's own, not the pipeline's: a typo, not a stage to run.
    assert caplog.text.rstrip().endswith("none.onnx not found"), caplog.text
    (tmp_path / "bad.onnx").write_bytes(b"\x08\xff\xfe not onnx")  # a protobuf's start, then not
    assert main(["serve", "--model", str(tmp_path / "bad.onnx")]) == 2
    assert "bad.onnx: not a readable ONNX model" in caplog.text
    (tmp_path / "notes.onnx").write_bytes(b"not onnx")
    assert main(["serve", "--model", str(tmp_path / "notes.onnx")]) == 2
    assert (
        "notes.onnx: a text file, not an ONNX model: --model takes the ONNX export" in caplog.text
    )
    caplog.clear()
    Image.new("RGB", (8, 8)).save(photo := tmp_path / "dog.png")
    assert main(["serve", "--model", str(photo)]) == 2
    assert caplog.text.rstrip().endswith(
        "dog.png: a PNG image, not an ONNX model: --model takes the ONNX export (models/model.onnx)"
    ), caplog.text  # serve takes no photos: predict's hint on where they go is not said here
    import torch

    weights = tmp_path / "model.pt"  # what the export stage writes beside model.onnx
    torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": {}}, weights)
    assert main(["serve", "--model", str(weights)]) == 2
    assert f"{weights}: PyTorch's weights file (torch.save), not an ONNX model; pass the ONNX " in (
        caplog.text
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", "--model", str(model), "--port", port]) == 2
    assert (
        f"cannot listen on 127.0.0.1:{port}: address already in use; another program listens on "
        "that port: stop it, or choose another --port (0 picks a free one)"
    ) in caplog.text
    assert "error while attempting to bind" not in caplog.text  # asyncio's words, address again
    assert main(["serve", "--model", str(model), "--host", "nosuchhost.invalid"]) == 2
    assert "--host takes an IP address or a name of this machine" in caplog.text
    for bad in (["--max-batch", "0"], ["--port", "70000"], ["--batch-wait-ms", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "--model", str(model), *bad])
        assert exit_.value.code == 2


def test_limits_that_are_no_finite_number_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # nan and inf pass `< 0`: a wait of either hangs every request, an upload limit of either
    # stops the server at its start with a traceback. The options are checked before the model
    # is read, so a missing model keeps a value let through from starting a server.
    model = tmp_path / "absent.onnx"
    for flag, value, allowed in (
        ("--batch-wait-ms", "nan", "a number of 0 or more"),
        ("--batch-wait-ms", "inf", "a number of 0 or more"),
        ("--batch-wait-ms", "-1", "a number of 0 or more"),
        ("--max-upload-mb", "nan", "a number above 0"),
        ("--max-upload-mb", "inf", "a number above 0"),
        ("--max-upload-mb", "0", "a number above 0"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "--model", str(model), flag, value])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert f"{flag} must be {allowed}, not {float(value):g}" in err, err


def test_other_commands_never_import_the_server() -> None:
    code = (
        "import sys; from visionpipe.cli import build_parser; build_parser();"
        "print(sorted(m for m in ('aiohttp', 'onnxruntime', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]", out.stderr


def _topk_form(topk: list[str]) -> tuple[bytes, dict[str, str]]:
    """As `curl -F file=@dog.jpg -F topk=2` sends it."""
    b = "topkboundary"
    fields = [_field(b, 'name="topk"', k.encode()) for k in topk]
    photo = _field(b, 'name="file"; filename="dog.jpg"', _jpeg(), "image/jpeg")
    body = b"".join([photo, *fields]) + f"--{b}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={b}"}


@pytest.mark.parametrize(
    ("query", "fields", "status", "words"),
    [
        ("", ["2"], 200, None),
        ("?topk=2", ["2"], 200, None),
        ("?topk=3", ["2"], 400, "different values: ?topk=3 and the form field topk=2; send one"),
        ("", ["1", "2"], 400, "the form field topk=1 and the form field topk=2; send one"),
        ("", ["9"], 400, "topk must be a whole number from 1 to 3; got '9'"),
        ("", ["two"], 400, "topk must be a whole number from 1 to 3; got 'two'"),
    ],
)
def test_a_form_s_topk_field_is_read(
    server: Served, query: str, fields: list[str], status: int, words: str | None
) -> None:
    # HTML forms and most clients (curl -F, requests' data=) send options as form fields.
    body, headers = _topk_form(fields)
    got_status, got = request(f"{server.url}/predict{query}", body, headers)
    assert got_status == status, got
    if words is None:
        assert len(got["predictions"][0]["top"]) == 2, got
    else:
        assert words in got["error"], got


def test_a_field_of_binary_bytes_without_a_file_name_is_an_image(server: Served) -> None:
    # requests' files={"file": (None, data)} sends no file name and no Content-Type; a text
    # field in a page's legacy charset (not UTF-8) is still text.
    b = "binaryfield"
    label = _field(b, 'name="label"', "café".encode("latin-1"))
    body = label + _field(b, 'name="photo"', _jpeg()) + f"--{b}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={b}"}
    status, got = request(f"{server.url}/predict", body, headers)
    assert status == 200 and [p["file"] for p in got["predictions"]] == ["photo"], got


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], dict]:
    """(status, headers, JSON body) of one response read off a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    while len(body) < int(headers["Content-Length"]):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(body)


def _closes(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_stalled_and_idle_clients_are_let_go(model: Path, tmp_path: Path) -> None:
    # A client that sends a head and stalls (slowloris, a dead mobile connection) gets a 408
    # naming the option; one that sends nothing, or half a head, is closed.
    options = ("--read-timeout-s", "1", "--keepalive-s", "1")
    with serve(model, tmp_path / "server.log", *options) as served:
        host, port = served.url.removeprefix("http://").split(":")
        body, headers = _topk_form(["2"])
        form_head = (
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {headers['Content-Type']}"
            f"\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        for start in (_upload_head(host).encode() + _jpeg()[:500], form_head.encode() + body[:99]):
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(start)
                status, headers, got = _read_answer(sock)
            assert status == 408 and headers["Connection"] == "close", got
            assert got["error"] == (
                "the request body stalled: no bytes for 1 s (visionpipe serve --read-timeout-s)"
            )
        for start in (b"", b"POST /predict HTTP/1.1\r\nHost: x\r\n"):
            with socket.create_connection((host, int(port)), timeout=30) as sock:
                sock.sendall(start)
                assert _closes(sock), start
        status, got = post_image(f"{served.url}/predict", _jpeg(), "image/jpeg")
        assert status == 200, got
    for bad in (["--read-timeout-s", "0"], ["--keepalive-s", "nan"]):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", "--model", str(model), *bad])
        assert exit_.value.code == 2


def test_expect_100_continue_is_refused_before_the_body(server: Served) -> None:
    # curl asks `Expect: 100-continue` before sending a body above 1 MB: a body the head already
    # refuses is never sent; one it takes is asked for, then answered.
    host, port = server.url.removeprefix("http://").split(":")
    data = _jpeg()
    for length, query, status in [(len(BIG), "", 413), (len(data), "?topk=7", 400)]:
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                f"POST /predict{query} HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {length}\r\nExpect: 100-continue\r\n\r\n".encode()
            )
            got_status, headers, got = _read_answer(sock)
            assert got_status == status and headers["Connection"] == "close", got
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(data)}\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        assert sock.recv(25) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(data)
        status, _, got = _read_answer(sock)
        assert status == 200 and got["predictions"][0]["top"][0]["class"] == "cat", got


def test_one_connection_takes_chunked_uploads_and_head_requests(server: Served) -> None:
    # As `curl -T - -X POST` (chunked, no length) and keep-alive clients (requests.Session) send.
    import http.client

    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    data = _jpeg()
    for i in range(20):
        body = iter([data[:100], data[100:]])
        headers = {"Content-Type": "image/jpeg; charset=binary"}
        conn.request("POST", f"/predict?name={i}.jpg", body, headers, encode_chunked=True)
        resp = conn.getresponse()
        got = json.loads(resp.read())
        assert resp.status == 200 and got["predictions"][0]["file"] == f"{i}.jpg", got
        conn.request("HEAD", "/health")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == b""
    conn.close()


def test_a_file_name_comes_back_as_the_client_s_file_has_it(server: Served) -> None:
    # Browsers, curl and requests write `"` and newlines in a form's file name as %22, %0D, %0A;
    # other characters (UTF-8, or RFC 5987's filename*) arrive as they are.
    b = "namesboundary"
    parts = [
        'name="file"; filename="say %22hi%22 #1 100%.jpg"',
        'name="file"; filename="new%0Aline.jpg"',
        'name="file"; filename="猫 咪 🐱.jpg"',
        "name=\"file\"; filename*=UTF-8''caf%C3%A9.jpg",
        # A backslash is no escape there: a Windows path, as old browsers sent, comes back whole.
        r'name="file"; filename="C:\Users\张伟\back\slash.jpg"',
        r'name="file"; filename="an \"escaped\" quote.jpg"; size=3',
        "name=file; filename=bare.jpg",
        'name="a; filename=evil.jpg"; filename="real.jpg"',  # parameters, not a text search
        "name=file; filename=with space.jpg",
    ]
    body = b"".join(_field(b, p, _jpeg(), "image/jpeg") for p in parts) + f"--{b}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={b}"}
    status, got = request(f"{server.url}/predict", body, headers)
    assert status == 200, got
    assert [p["file"] for p in got["predictions"]] == [
        'say "hi" #1 100%.jpg',
        "new\nline.jpg",
        "猫 咪 🐱.jpg",
        "café.jpg",
        "C:\\Users\\张伟\\back\\slash.jpg",
        'an "escaped" quote.jpg',
        "bare.jpg",
        "real.jpg",
        "with space.jpg",
    ]


class _WorkerCrash(BaseException):
    """What no `except Exception` catches: the model worker task dies of it."""


def test_a_dead_model_worker_answers_503_and_fails_health(model: Path) -> None:
    # A load balancer's or Kubernetes' probe of /health then restarts the server; requests get
    # an error at once rather than waiting forever for a worker that is gone.
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from visionpipe.predict import OnnxBackend
    from visionpipe.serve import ServeConfig, Service, make_app

    def crash(rows: np.ndarray) -> np.ndarray:
        raise _WorkerCrash("out of device memory")

    async def scenario() -> list[tuple[int, dict]]:
        service = Service(OnnxBackend(model), ServeConfig(model=model))
        answers = []
        async with TestClient(TestServer(make_app(service))) as client:
            service.batcher.run = crash
            for _ in range(2):
                resp = await client.post(
                    "/predict", data=_jpeg(), headers={"Content-Type": "image/jpeg"}
                )
                answers.append((resp.status, await resp.json()))
            resp = await client.get("/health")
            answers.append((resp.status, await resp.json()))
        return answers

    (first, second, health) = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert first[0] == second[0] == 503, (first, second)
    assert "out of device memory" in first[1]["error"] and "restart the server" in first[1]["error"]
    assert "not running" in second[1]["error"]
    assert health[0] == 503 and "stopped" in health[1]["status"], health


def test_the_md5_served_is_of_the_model_loaded_when_an_export_replaces_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionpipe import serve

    model = write_tiny_onnx(tmp_path / "model.onnx")
    newer = write_tiny_onnx(tmp_path / "newer.onnx", classes=["x", "y"])
    loading = serve.OnnxBackend

    def exported_meanwhile(path: Path) -> object:  # the export's atomic replace, mid-load
        backend = loading(path)
        if newer.exists():
            newer.replace(path)
        return backend

    monkeypatch.setattr(serve, "OnnxBackend", exported_meanwhile)
    backend, md5 = serve.open_model(model)
    assert backend.classes == ["x", "y"]
    assert md5 == hashlib.md5(model.read_bytes()).hexdigest()


def test_out_of_memory_under_load_is_a_503_to_retry_not_a_bug(
    model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Many large images at once in a memory-limited container: the request that finds no memory
    # is told to retry, and the log has a line, not a traceback.
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from visionpipe import serve
    from visionpipe.predict import OnnxBackend

    def no_memory(uploads: list, size: int, *_: object) -> list:
        raise MemoryError()

    monkeypatch.setattr(serve, "decode_uploads", no_memory)

    async def scenario() -> tuple[int, dict, str | None]:
        service = serve.Service(OnnxBackend(model), serve.ServeConfig(model=model))
        async with TestClient(TestServer(serve.make_app(service))) as client:
            resp = await client.post(
                "/predict", data=_jpeg(), headers={"Content-Type": "image/jpeg"}
            )
            return resp.status, await resp.json(), resp.headers.get("Retry-After")

    with caplog.at_level("WARNING"):
        status, got, retry = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert status == 503 and "ran out of memory" in got["error"] and retry, got
    assert "out of memory answering POST /predict" in caplog.text
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)


def test_an_internal_error_keeps_its_words_in_the_server_s_log(
    model: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from visionpipe import serve
    from visionpipe.predict import OnnxBackend

    def broken(uploads: list, size: int, *_: object) -> list:
        raise RuntimeError("/home/me/secret/model.onnx: a bug")

    monkeypatch.setattr(serve, "decode_uploads", broken)

    async def scenario() -> tuple[int, dict]:
        service = serve.Service(OnnxBackend(model), serve.ServeConfig(model=model))
        async with TestClient(TestServer(serve.make_app(service))) as client:
            resp = await client.post(
                "/predict", data=_jpeg(), headers={"Content-Type": "image/jpeg"}
            )
            return resp.status, await resp.json()

    with caplog.at_level("ERROR"):
        status, got = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert status == 500 and got["error"].startswith("internal error (RuntimeError)"), got
    assert "secret" not in got["error"] and "/home/me/secret/model.onnx: a bug" in caplog.text


def test_a_failed_model_call_shared_by_requests_is_one_traceback_in_the_log(
    model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The batcher hands one call's error to every request in it: each is answered 500, and the
    # log has the traceback once, a line for each other request.
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer

    from visionpipe import serve
    from visionpipe.predict import OnnxBackend

    async def scenario() -> list[int]:
        config = serve.ServeConfig(model=model, batch_wait_ms=300)
        service = serve.Service(OnnxBackend(model), config)

        def broken(rows: np.ndarray) -> np.ndarray:
            raise RuntimeError("the model's runtime failed")

        service.batcher.run = broken
        async with TestClient(TestServer(serve.make_app(service))) as client:
            headers = {"Content-Type": "image/jpeg"}
            posts = [client.post("/predict", data=_jpeg(), headers=headers) for _ in range(3)]
            return [resp.status for resp in await asyncio.gather(*posts)]

    with caplog.at_level("ERROR"):
        statuses = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert statuses == [500, 500, 500], statuses
    assert caplog.text.count("Traceback") == 1, caplog.text
    assert caplog.text.count("the RuntimeError logged above") == 2, caplog.text


def test_a_form_of_more_text_fields_than_a_form_needs_is_refused(server: Served) -> None:
    # 200,000 one-byte fields in 10 MB held the event loop for 80 s, /health with it.
    b = "manyfields"
    fields = b"".join(_field(b, f'name="f{i}"', b"x") for i in range(65))
    body = fields + _field(b, 'name="file"; filename="a.jpg"', _jpeg(), "image/jpeg")
    body += f"--{b}--\r\n".encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={b}"}
    status, got = request(f"{server.url}/predict", body, headers)
    assert status == 413 and "more than 64 text fields in one form" in got["error"], got
    fewer = b"".join(_field(b, f'name="f{i}"', b"x") for i in range(64))
    body = fewer + _field(b, 'name="file"; filename="a.jpg"', _jpeg(), "image/jpeg")
    status, got = request(f"{server.url}/predict", body + f"--{b}--\r\n".encode(), headers)
    assert status == 200, got
    # Empty file inputs (a form's unused file fields) are parts too: 100,000 of them held the loop.
    empty = b"".join(
        _field(b, f'name="e{i}"; filename=""', b"", "application/octet-stream") for i in range(321)
    )
    body = empty + _field(b, 'name="file"; filename="a.jpg"', _jpeg(), "image/jpeg")
    status, got = request(f"{server.url}/predict", body + f"--{b}--\r\n".encode(), headers)
    assert status == 413 and "more than 320 parts in one form" in got["error"], got


def test_only_a_small_upload_is_decoded_on_the_event_loop() -> None:
    # Few pixels are not enough: a JPEG's decode time grows with its bytes' scans too.
    from visionpipe import serve

    small = serve.Upload("a.jpg", _jpeg())
    assert serve._decodes_quickly([small])
    padded = serve.Upload("a.jpg", _jpeg() + b"\0" * serve.INLINE_DECODE_BYTES)
    assert not serve._decodes_quickly([padded])


def test_a_client_that_hangs_up_leaves_no_decoding_behind(server: Served) -> None:
    # A few KB (a 40000x40000 arithmetic-coded JPEG, a 64-MP one-bit PNG) may hold a decode
    # thread for a second an image: a request dropped at once must not run on for nobody.
    from visionpipe.serve import Upload, decode_uploads

    photo = Upload("a.jpg", _jpeg())
    seen = iter([False, True])
    assert len(decode_uploads([photo, photo], 32, lambda: next(seen))) == 1
    big = _encode(Image.new("1", (7999, 7999)), "PNG")
    body, content_type = _form([(f"{i}.png", big) for i in range(3)])
    host, port = server.url.removeprefix("http://").split(":")
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    before = request(f"{server.url}/health")[1]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        time.sleep(0.3)  # read whole: its decoding has begun
    time.sleep(6)  # seconds for 192 megapixels, were they decoded
    after = request(f"{server.url}/health")[1]
    assert (after["requests"], after["images"]) == (before["requests"], before["images"]), after


def test_a_decode_under_way_is_told_its_client_left(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiohttp's test server cancels a handler whose client hangs up, as serve's own does: the
    # decode under way then stops at its next image, and one queued behind it never starts.
    import asyncio
    import threading

    from aiohttp.test_utils import TestClient, TestServer

    from visionpipe import serve

    started, release, told = threading.Event(), threading.Event(), []

    def slow(uploads: list, size: int, gone: Callable[[], bool]) -> list:
        started.set()
        release.wait(10)
        told.append(gone())
        return []

    monkeypatch.setattr(serve, "decode_uploads", slow)
    large = _jpeg() + b"\0" * serve.INLINE_DECODE_BYTES  # decoded in the pool, not inline

    async def scenario() -> None:
        from visionpipe.predict import OnnxBackend

        service = serve.Service(OnnxBackend(model), serve.ServeConfig(model=model))
        service.decoder = concurrent.futures.ThreadPoolExecutor(1)  # one runs, one waits
        async with TestClient(TestServer(serve.make_app(service))) as client:
            headers = {"Content-Type": "image/jpeg"}
            posts = [
                asyncio.create_task(client.post("/predict", data=large, headers=headers))
                for _ in range(2)
            ]
            await asyncio.to_thread(started.wait, 10)
            await asyncio.sleep(0.3)  # the second queued behind the first
            for post in posts:
                post.cancel()  # both clients hang up
            await asyncio.sleep(0.3)
            release.set()
            await asyncio.sleep(0.5)  # the server still up: what its decodes do meanwhile
            assert told == [True], told

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))


def test_a_decode_dropped_at_a_stop_is_answered_503_not_a_closed_socket(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SIGTERM under load: the decodes not begun are dropped; their clients are told to retry.
    import asyncio
    import threading

    from aiohttp.test_utils import TestClient, TestServer

    from visionpipe import serve
    from visionpipe.predict import OnnxBackend

    release, real = threading.Event(), serve.decode_uploads

    def slow(uploads: list, size: int, *_: object) -> list:
        release.wait(10)
        return real(uploads, size)

    monkeypatch.setattr(serve, "decode_uploads", slow)
    large = _jpeg() + b"\0" * serve.INLINE_DECODE_BYTES  # decoded in the pool, not inline

    async def scenario() -> list[tuple[int, str | None]]:
        service = serve.Service(OnnxBackend(model), serve.ServeConfig(model=model))
        service.decoder = concurrent.futures.ThreadPoolExecutor(1)  # one runs, one waits
        async with TestClient(TestServer(serve.make_app(service))) as client:

            async def post() -> tuple[int, str | None]:
                headers = {"Content-Type": "image/jpeg"}
                resp = await client.post("/predict", data=large, headers=headers)
                return resp.status, resp.headers.get("Retry-After")

            posts = [asyncio.create_task(post()) for _ in range(2)]
            await asyncio.sleep(0.5)
            service.stopping = True
            await service.drain(0.1)
            release.set()
            return list(await asyncio.gather(*posts))

    answers = asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    assert sorted(answers) == [(200, None), (503, "5")], answers
