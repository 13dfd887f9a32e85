"""`visionpipe serve`: an HTTP prediction service over the exported ONNX model.

Endpoints: `POST /predict` (one image as the raw body, or a multipart form of image files) answers
the top-k classes of each image with the numbers `visionpipe predict` gives for the same file: the
same decode and resize (`images.load_array`), the same model session (`predict.OnnxBackend`), the
same softmax and rounding (`predict.top_k`). `GET /model` describes the model, `GET /health` says
the service is up and what it has done, and `GET /` is a page to drop photos on.

Concurrent requests share model calls (`batching.Batcher`). Bad input never reaches the model: an
oversized, empty or mistyped body or an undecodable image gets a 4xx with a JSON error naming the
problem, and the server goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError, HttpProcessingError
from aiohttp.web_urldispatcher import _default_expect_handler

from visionpipe import limits, logs, paths
from visionpipe.batching import Batcher, BatcherStopped
from visionpipe.images import (
    MAX_PIXELS,
    BadImageError,
    decode_pixels,
    header_pixels,
    load_array,
    quiet_pillow,
    to_model_input,
)
from visionpipe.names import counted
from visionpipe.predict import OnnxBackend, Prediction, softmax, top_k
from visionpipe.serve_access import cors, host_guard, json_response, let_read

log = logging.getLogger(__name__)
T = TypeVar("T")

# Images whose headers promise this many pixels in all decode on the event loop: thumbnails
# decode in well under a millisecond, less than the hand-off to a worker thread costs. Others,
# and formats whose size is not read from the header, decode in a thread: a tiny file can hold a
# huge image.
INLINE_DECODE_PIXELS = 256 * 256
# And this few bytes: a JPEG's decode time grows with its scans, not only its pixels (a 10 MB
# file of 870,000 scans of a 256x256 image decodes for 30 s).
INLINE_DECODE_BYTES = 64 * 1024
# How long a stop (Ctrl-C, SIGTERM) waits for requests in progress, uploads still arriving too,
# before aiohttp's own shutdown, which reads no more bytes and gives handlers GRACE_S: within the
# 10 s after which `docker stop` kills.
SHUTDOWN_S = 5.0
GRACE_S = 1.0
MAX_IMAGES = 256  # per request: decoding many tiny images must not hold a worker for long
# And the pixels they hold in all: a 62 KB PNG of zeros can be a 64-MP image that takes a second
# to decode, and 256 of them would hold a decode thread for minutes. Four 64-MP photos' worth,
# more than a 10 MB upload of camera JPEGs holds.
MAX_REQUEST_PIXELS = 4 * MAX_PIXELS
# Text fields a form may carry beside its images (a label, a token, topk): each part costs the
# parser the same whatever its size, and 200,000 fields of 10 MB held the event loop 80 s.
MAX_FIELDS = 64
BINARY = "application/octet-stream"  # a body or form part of bytes of no declared kind
# The Content-Encodings aiohttp decodes (br and zstd where their packages are installed; where
# not, it answers 400 itself); "" and identity: none.
DECODED = frozenset({"", "identity", "gzip", "deflate", "br", "zstd"})
ENDPOINTS = "GET /, GET /health, GET /model, POST /predict"
RESTART = "restart the server (its log says why it stopped)"
HOW_TO_POST = (
    "POST an image as the body (Content-Type image/* or application/octet-stream) "
    "or a multipart/form-data form of image files"
)


@dataclass(frozen=True)
class ServeConfig:
    """`visionpipe serve`'s options."""

    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    topk: int = 3  # classes per image unless a request asks (?topk=)
    max_batch: int = 64  # images in one model call, at most
    batch_wait_ms: float = 0.0  # how long a model call waits for more requests to join it
    max_upload_mb: float = 10.0  # request body size limit, in MiB
    read_timeout_s: float = 30.0  # the longest a request body may pause between bytes
    # How long a connection may wait for its next request's head (idle keep-alive, or a head sent
    # slowly); above a reverse proxy's own idle limit (nginx: 60 s), so that the proxy closes first.
    keepalive_s: float = 75.0
    # Origins (scheme://host:port) of web pages that may call it from a browser; "*" any.
    allow_origins: tuple[str, ...] = ()
    # Names a request arriving on a loopback address may give as its Host, beyond localhost,
    # this machine's name and addresses ("*": any); see serve_access.
    allow_hosts: tuple[str, ...] = ()

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


class ApiError(Exception):
    """A request the service refuses: `status` and a message naming the problem."""

    def __init__(self, status: int, message: str, close: bool = False, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra
        self.close = close or status == 408  # the rest of a stalled body may never come

    def response(self) -> web.Response:
        retry = {"Retry-After": "5"} if self.status == 503 else None
        response = json_response(
            {"error": self.message, **self.extra}, status=self.status, headers=retry
        )
        if self.close:
            response.force_close()
        return response


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


def _too_large(size: int | None, limit: int) -> ApiError:
    body = f"request body of {size:,} bytes" if size is not None else "request body"
    return ApiError(
        413, f"{body} is above the {limit:,}-byte upload limit (visionpipe serve --max-upload-mb)"
    )


async def _within(timeout: float, read: Awaitable[T]) -> T:
    """`read` of a request body, which must bring bytes (or the end) within `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            return await read
    except TimeoutError:
        raise ApiError(
            408,
            f"the request body stalled: no bytes for {timeout:g} s "
            "(visionpipe serve --read-timeout-s)",
        ) from None


async def _read_body(request: web.Request, limit: int, timeout: float) -> bytes:
    data = bytearray()
    while chunk := await _within(timeout, request.content.readany()):
        data += chunk
        if len(data) > limit:
            raise _too_large(None, limit)
    return bytes(data)


# Browsers (the HTML standard's form encoding), curl and Python's requests send `"`, CR and LF
# in a multipart file name as %22, %0D and %0A: the name the client's file has is without them.
_FILENAME_ESCAPES = {"%22": '"', "%0D": "\r", "%0A": "\n"}


# One `; key=value` parameter of a Content-Disposition, its value quoted or not.
_PARAM = re.compile(r'\s*;\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def _disposition_params(header: str) -> dict[str, str] | None:
    """The parameters of a Content-Disposition by lower-case key, quoted values as sent (only an
    escaped `"` unescaped); None where it does not parse as parameters."""
    pos, params = header.find(";"), {}
    if pos < 0:
        return {}
    while pos < len(header.rstrip()):
        if (m := _PARAM.match(header, pos)) is None:
            return None
        value = m[2].strip()
        quoted = len(value) >= 2 and value[0] == value[-1] == '"'
        params.setdefault(m[1].lower(), value[1:-1].replace('\\"', '"') if quoted else value)
        pos = m.end()
    return params


def _file_name(part: BodyPartReader) -> str:
    """The file name a form part was sent with. aiohttp reads `\\` in the quoted name as an
    escape and drops it (`back\\slash.jpg` comes out `backslash.jpg`); browsers, curl and
    requests escape nothing but `"`, CR and LF, so the name is taken from the raw header, with
    only an escaped `"` unescaped. RFC 5987's filename* is aiohttp's to decode."""
    params = _disposition_params(part.headers.get("Content-Disposition", ""))
    if params is None or "filename*" in params or "filename" not in params:
        sent = part.filename or ""
    else:
        sent = params["filename"]
    return re.sub("%22|%0D|%0A", lambda m: _FILENAME_ESCAPES[m[0]], sent)


def _text(part: BodyPartReader, data: bytes) -> str | None:
    """A form's plain field's value (`curl -F name=abc`, a page's hidden input, a JSON part that
    Spring, axios or a browser's FormData send beside the file): no file name (but for JSON),
    and text. None for an upload: a file name, an image or octet-stream type (aiohttp's FormData
    of bytes), or bytes that are not text: a NUL among the first 8000, as git tells binary files
    (requests' `files={"file": (None, data)}`), or for a declared type other than text/*, bytes
    that are not UTF-8."""
    kind = (part.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    # A browser's FormData names a JSON Blob's part "blob": JSON is a field, file name or not.
    json_part = kind == "application/json" or kind.endswith("+json")
    if kind.startswith("image/") or kind == BINARY or (part.filename is not None and not json_part):
        return None
    if kind.startswith("text/"):
        return data.decode(errors="replace")
    if b"\0" in data[:8000]:
        return None
    if kind:  # application/json and the like: text where it is UTF-8
        try:
            return data.decode()
        except UnicodeDecodeError:
            return None
    return data.decode(errors="replace")  # no type: a page's field in a legacy charset is text


@dataclass
class Form:
    """What a request carries: its images, and a form's text fields by name."""

    uploads: list[Upload] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)


async def _read_part(part: BodyPartReader, room: int, limit: int, timeout: float) -> bytes:
    """A part's bytes; `room`: what the body limit leaves of the form."""
    data = bytearray()
    while chunk := await _within(timeout, part.read_chunk()):
        data += chunk
        if len(data) > room:  # text fields count too: the limit bounds the whole body
            raise _too_large(None, limit)
    return bytes(data)


async def _read_form(request: web.Request, limit: int, timeout: float) -> Form:
    form, total, parts = Form(), 0, 0
    try:
        reader = await request.multipart()
        while (part := await _within(timeout, reader.next())) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(400, "nested multipart forms are not supported; send image files")
            parts += 1
            if parts > MAX_IMAGES + MAX_FIELDS:  # empty file inputs too: each costs the parser
                raise ApiError(
                    413,
                    f"more than {MAX_IMAGES + MAX_FIELDS} parts in one form: send at most"
                    f" {MAX_IMAGES} images and {MAX_FIELDS} text fields",
                )
            data = await _read_part(part, limit - total, limit, timeout)
            total += len(data)
            # Forms carry text fields beside their files (a label, a CSRF token, topk); they
            # are not images, and refusing the whole request for them would fail ordinary clients.
            if (text := _text(part, data)) is not None:
                if sum(map(len, form.fields.values())) == MAX_FIELDS:
                    raise ApiError(
                        413, f"more than {MAX_FIELDS} text fields in one form: send the images"
                    )
                form.fields.setdefault(part.name or "", []).append(text)
            elif part.filename != "" or data:  # "" and no bytes: a file input left empty
                if len(form.uploads) == MAX_IMAGES:  # known only once it is no text field
                    raise ApiError(
                        413, f"more than {MAX_IMAGES} images in one request: send them in several"
                    )
                name = _file_name(part) or part.name or f"part {len(form.uploads) + 1}"
                form.uploads.append(Upload(name, data))
    except (ValueError, AssertionError) as exc:  # aiohttp's multipart parser on a bad body
        raise ApiError(400, f"malformed multipart body: {exc}") from None
    except BadHttpMessage as exc:  # a part's head: a raw line break in a file name, say
        raise ApiError(400, f"malformed multipart body: {exc.message}") from None
    if not form.uploads:
        named = ", ".join(repr(name) for name in form.fields)
        only = f", only the text field(s) {named}" if form.fields else ""
        raise ApiError(
            400, f"the form holds no files{only}; {HOW_TO_POST} (curl -F file=@photo.jpg)"
        )
    return form


def check_head(request: web.Request, limit: int) -> None:
    """ApiError for a request whose head already refuses it: too large a body, or a wrong type."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(request.content_length, limit)
    kind = request.content_type  # aiohttp's default without the header: application/octet-stream
    if kind != "multipart/form-data" and not (kind.startswith("image/") or kind == BINARY):
        raise ApiError(415, f"unsupported Content-Type {kind!r}; {HOW_TO_POST}")
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in DECODED:  # aiohttp hands these over undecoded (x-gzip, "gzip, gzip")
        raise ApiError(
            415,
            f"unsupported Content-Encoding {encoding!r}: send the body as it is, or compressed"
            " whole with gzip or deflate",
        )


def _unreadable(request: web.Request, exc: web.RequestPayloadError) -> ApiError:
    """The 400 for a body aiohttp cannot read: not the Content-Encoding it claims, or cut short
    against its length or chunking."""
    cause = exc.__cause__ or exc
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if isinstance(cause, ContentEncodingError) and encoding:
        return ApiError(
            400,
            f"the request body is not valid {encoding} data, as its Content-Encoding header "
            "says; send the bytes as they are, without the header, or compress them whole",
            close=True,
        )
    detail = getattr(cause, "message", None) or str(cause)
    return ApiError(400, f"the request body could not be read: {detail}", close=True)


async def read_uploads(request: web.Request, limit: int, timeout: float) -> Form:
    """The images a request carries; ApiError for a body that is too large, empty, mistyped, or
    that stalls for `timeout` seconds."""
    check_head(request, limit)
    try:
        if request.content_type == "multipart/form-data":
            return await _read_form(request, limit, timeout)
        data = await _read_body(request, limit, timeout)
    except ConnectionError:  # the client hung up mid-upload; the answer reaches nobody
        raise ApiError(400, "the upload ended early: the client closed the connection") from None
    except web.RequestPayloadError as exc:  # aiohttp could not read the body it was sent
        # Its parser has given up on the connection; aiohttp would read on to close it gently and
        # log the same error as unhandled.
        request.content.feed_eof()
        raise _unreadable(request, exc) from None
    if not data:
        raise ApiError(400, f"empty request body; {HOW_TO_POST}")
    return Form([Upload(request.query.get("name", "body"), data)])


def decode_uploads(
    uploads: list[Upload], size: int, gone: Callable[[], bool] = lambda: False
) -> list[np.ndarray]:
    """(3, size, size) uint8 arrays, as predict decodes files; ApiError naming every bad one,
    or refusing images of more pixels in all than one request may decode. Stops, with what it
    has, once `gone()`: the client left, and its request's answer is dropped."""
    # An image above MAX_PIXELS alone is refused below, as predict refuses it: not counted here.
    total = sum(n for u in uploads if (n := decode_pixels(u.data, size)) <= MAX_PIXELS)
    if total > MAX_REQUEST_PIXELS:
        raise ApiError(
            413,
            f"the {len(uploads)} images of this request hold {total:,} pixels, above the "
            f"{MAX_REQUEST_PIXELS:,} one request may: send them in several",
        )
    arrays, problems = [], []
    for index, upload in enumerate(uploads):
        if gone():  # a few KB may hold seconds of decoding: none for a client that left
            return arrays
        try:
            arrays.append(load_array(upload.data, upload.name, size))
        except BadImageError as exc:
            # The index too: a client resending the others tells two files of one name apart.
            problems.append({"file": upload.name, "index": index, "error": exc.reason})
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ApiError(422, f"{first['file']}: {first['error']}{more}", problems=problems)
    return arrays


def _decodes_quickly(uploads: list[Upload]) -> bool:
    if sum(len(u.data) for u in uploads) > INLINE_DECODE_BYTES:
        return False
    total = 0
    for upload in uploads:
        pixels = header_pixels(upload.data)
        if pixels is None:
            return False
        total += pixels
    return total <= INLINE_DECODE_PIXELS


def _md5(path: Path) -> str:
    """The model file's md5, the hash dvc.lock records for it: which model this is."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _identity(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def open_model(path: Path, tries: int = 3) -> tuple[OnnxBackend, str]:
    """The model at `path` and the md5 of the very file it was read from. An export replaces
    the file while a server starts (atomically: a new file under the name), so the md5 of the
    name read before or after loading may be another model's; the same file before and after
    means the two agree, else it is read again."""
    path = paths.require(path, "export")
    for _ in range(tries):
        before = _identity(path)
        backend = OnnxBackend(path)  # first: its errors say what the file is not
        md5 = _md5(path)
        if _identity(path) == before:
            return backend, md5
    from visionpipe.onnxrt import ModelFileError

    raise ModelFileError(f"{path} was replaced {tries} times while it was read: try again")


class Service:
    """The endpoints, over one model session and one batcher."""

    def __init__(self, backend: OnnxBackend, config: ServeConfig, md5: str | None = None) -> None:
        """`md5`: the model file's, as `open_model` gives it (default: read from its path)."""
        self.backend, self.config = backend, config
        self.batcher = Batcher(backend.logits, config.max_batch, config.batch_wait_ms / 1000)
        # Decodes in threads of their own, as many as the cores this process may use (its CPU
        # set and quota, not the host's count): a decode holds memory (up to ~250 MB for 64
        # megapixels), and threads beyond the cores only hold more of it at once. At a stop the
        # decodes not begun are dropped, their requests answered 503 (`drain`).
        self.decoder = ThreadPoolExecutor(limits.cpu_count(), thread_name_prefix="decode")
        self.info = {
            "model": str(config.model),
            "md5": md5 or _md5(config.model),
            # The model.pt it was exported from (its metadata; None for an older export).
            "state_dict_md5": backend.session.get_modelmeta().custom_metadata_map.get(
                "state_dict_md5"
            ),
            "classes": backend.classes,
            "image_size": backend.image_size,
            "topk": min(config.topk, len(backend.classes)),
            "max_batch": config.max_batch,
            "batch_wait_ms": config.batch_wait_ms,
            "max_upload_bytes": config.max_upload_bytes,
            "read_timeout_s": config.read_timeout_s,
            "keepalive_s": config.keepalive_s,
            "max_images_per_request": MAX_IMAGES,
            "max_pixels_per_request": MAX_REQUEST_PIXELS,
            "max_pixels": MAX_PIXELS,
        }
        self.page = resources.files("visionpipe").joinpath("serve_page.html").read_text()
        self.started = time.monotonic()
        self.requests = 0
        self.refused = 0  # prediction requests answered with a 4xx
        self.in_flight = 0  # requests being read or answered
        self.stopped_by: tuple[int, float] | None = None  # the first stop signal, and when
        self.stopping = False

    async def track(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Count the requests in progress; once stopping, close each connection after its answer."""
        self.in_flight += 1
        try:
            response = await handler(request)
        finally:
            self.in_flight -= 1
        if self.stopping:
            response.force_close()  # a keep-alive client sends its next request elsewhere
        return response

    async def drain(self, timeout: float) -> None:
        """Wait until no request is in progress, for `timeout` seconds at most; then drop the
        decodes not begun, whose requests are answered 503 (`_decode`) before the connections
        close."""
        end = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < end:
            await asyncio.sleep(0.02)
        self.decoder.shutdown(wait=False, cancel_futures=True)
        await asyncio.sleep(0.05)  # the handlers of the dropped decodes write their 503s

    async def _decode(self, uploads: list[Upload], size: int) -> list[np.ndarray]:
        if _decodes_quickly(uploads):
            return decode_uploads(uploads, size)
        loop, gone = asyncio.get_running_loop(), threading.Event()
        try:
            return await loop.run_in_executor(
                self.decoder, decode_uploads, uploads, size, gone.is_set
            )
        except asyncio.CancelledError:
            gone.set()  # the client left (HANDLER_CANCELLATION), or the server stops
            task = asyncio.current_task()
            if self.stopping and task is not None and not task.cancelling():
                # The decode was dropped at a stop (`drain`), this request itself not cancelled.
                raise ApiError(
                    503, "the server stopped before decoding this request: retry"
                ) from None
            raise

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=self.page, content_type="text/html")

    async def model(self, request: web.Request) -> web.Response:
        return json_response(self.info)

    async def health(self, request: web.Request) -> web.Response:
        stats = self.batcher.stats
        if self.stopping:
            status = "stopping"
        else:
            status = "ok" if self.batcher.alive else f"the model worker has stopped; {RESTART}"
        return json_response(
            {
                "status": status,
                "uptime_s": round(time.monotonic() - self.started, 1),
                "requests": self.requests,
                "refused": self.refused,
                "images": stats.images,
                "model_calls": stats.calls,
                "largest_call": stats.largest,
            },
            status=200 if status == "ok" else 503,  # a probe restarts it, or sends no more
        )

    def _topk(self, request: web.Request, form: Form | None = None) -> int:
        """The classes per image a request asks for (`?topk=`, or a form's `topk` field)."""
        asked = [(f"?topk={raw}", raw) for raw in request.query.getall("topk", [])]
        fields = form.fields.get("topk", []) if form else []
        asked += [(f"the form field topk={raw}", raw) for raw in fields]
        n, ks = len(self.backend.classes), {}
        for where, raw in asked:
            try:  # ASCII digits only: int() also takes "1_0", " 2" and other scripts' digits
                k = int(raw) if raw.isascii() and raw.isdigit() else 0
            except ValueError:  # one of thousands of digits
                k = 0
            if not 1 <= k <= n:
                raise ApiError(400, f"topk must be a whole number from 1 to {n}; got {raw!r}")
            ks[where] = k
        if len(set(ks.values())) > 1:
            both = " and ".join(ks)
            raise ApiError(400, f"topk is asked with different values: {both}; send one")
        return next(iter(ks.values()), self.info["topk"])

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue` (curl sends it above 1 MB): a request its head already refuses
        gets its error at once, and the client need not send the body."""
        try:
            self._topk(request)
            check_head(request, self.config.max_upload_bytes)
        except ApiError as exc:
            self.refused += 1
            response = exc.response()
            response.force_close()  # the body the client was about to send is never read
            # aiohttp answers an Expect before the middlewares run: the CORS header is set here.
            let_read(response, request, self.config.allow_origins)
            return response
        return await _default_expect_handler(request)

    async def predict(self, request: web.Request) -> web.Response:
        try:
            return await self._predict(request)
        except ApiError:
            self.refused += 1
            raise

    async def _predict(self, request: web.Request) -> web.Response:
        self._topk(request)  # a bad ?topk= is refused before the body is read
        config = self.config
        form = await read_uploads(request, config.max_upload_bytes, config.read_timeout_s)
        k, uploads, size = self._topk(request, form), form.uploads, self.backend.image_size
        arrays = await self._decode(uploads, size)
        logits = await self.batcher.submit(to_model_input(arrays))
        probs = softmax(logits.astype(np.float64))  # as predict_files: float64 from the logits
        self.requests += 1
        preds = [
            asdict(Prediction(u.name, top_k(p, self.backend.classes, k)))
            for u, p in zip(uploads, probs, strict=True)
        ]
        # A diverged model's probabilities are NaN: null in JSON, as `visionpipe predict --json`.
        return json_response({"predictions": preds})


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error as JSON: the service's own, aiohttp's (404, 405, 413), and bugs (500)."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except BatcherStopped as exc:  # the model worker died: every later request would wait forever
        log.error("cannot answer %s %s: %s", request.method, request.path, exc)
        return json_response({"error": f"{exc}; {RESTART}"}, status=503)
    except MemoryError:  # under load within a process memory limit: no bug, and it passes
        log.warning("out of memory answering %s %s: answered 503", request.method, request.path)
        return ApiError(
            503,
            "the server ran out of memory for this request (others in progress hold some):"
            " retry later, send fewer or smaller images, or give the server more memory",
        ).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text or exc.reason
        if exc.status == 404:
            # CONNECT's target is an address, not a path: named as the request gave it.
            target = request.path or request.raw_path
            if request.method == "CONNECT":
                target = f"CONNECT {request.raw_path or request.host}"
            message = f"no endpoint {target}; the endpoints are {ENDPOINTS}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}; {ENDPOINTS}"
            if request.method == "PUT" and request.path == "/predict":  # curl -T FILE does PUT
                message += " (curl -T: add -X POST)"
        # A 405 must say which methods the path takes (HTTP's Allow header); clients read it.
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_response({"error": message}, status=exc.status, headers=allow)
    except Exception as exc:
        if _said_before(exc):  # one failed model call fails every request in it: one traceback
            log.error(
                "internal error answering %s %s: the %s logged above",
                *(request.method, request.path, type(exc).__name__),
            )
        else:
            log.exception("internal error answering %s %s", request.method, request.path)
        # Its words stay in the server's log: they may name the server's files.
        error = f"internal error ({type(exc).__name__}): the server's log has what happened"
        return json_response({"error": error}, status=500)


def _said_before(exc: BaseException) -> bool:
    """Whether `exc` was logged already (it failed a model call several requests shared)."""
    if getattr(exc, "_visionpipe_logged", False):
        return True
    with contextlib.suppress(AttributeError, TypeError):  # an exception without a __dict__
        exc._visionpipe_logged = True  # type: ignore[attr-defined]
    return False


def make_app(service: Service) -> web.Application:
    # The upload limit is enforced while reading (read_uploads); aiohttp's own limit is only
    # a backstop for a handler that reads the body whole.

    @web.middleware
    async def track(request: web.Request, handler: Any) -> web.StreamResponse:
        return await service.track(request, handler)

    app = web.Application(
        middlewares=[
            track,
            host_guard(service.config.allow_hosts, service.config.host),
            cors(service.config.allow_origins),
            json_errors,
        ],
        client_max_size=service.config.max_upload_bytes,
    )
    app.router.add_get("/", service.index)
    app.router.add_get("/health", service.health)
    app.router.add_get("/model", service.model)
    app.router.add_post("/predict", service.predict, expect_handler=service.expect)

    async def batcher(app: web.Application) -> Any:
        await service.batcher.start()
        yield
        await service.batcher.close()
        service.decoder.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(batcher)
    return app


def _not_a_bug(record: logging.LogRecord) -> bool:
    """False for aiohttp's log of a request it could not parse (a header too long, a body in an
    encoding it cannot decode, br or zstd without their optional packages, a Content-Length
    beside a Transfer-Encoding): the client got aiohttp's 400, and a traceback would read as a
    bug, ten lines to the log for each such request."""
    return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


# A client that hangs up cancels its request's handler: its decodes not begun are dropped, the
# one under way stops at its next image (aiohttp lets handlers run on by default).
HANDLER_CANCELLATION = True


async def run_server(service: Service) -> None:
    """Serve until SIGINT, SIGTERM or SIGHUP; prints the addresses once it is listening."""
    config = service.config
    server_log = logging.getLogger("aiohttp.server")
    if _not_a_bug not in server_log.filters:
        server_log.addFilter(_not_a_bug)
    runner = web.AppRunner(
        make_app(service),
        handler_cancellation=HANDLER_CANCELLATION,
        access_log=None,
        shutdown_timeout=GRACE_S,
        keepalive_timeout=config.keepalive_s,
    )
    await runner.setup()
    try:
        sockets = listening_sockets(config.host, config.port)
        for sock in sockets:
            await web.SockSite(runner, sock).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        # SIGHUP too (a closed terminal, a supervisor): as the stages take it, a stop that
        # answers the requests in progress, not Python's default of dying on the spot. Before
        # the line below: a supervisor may signal as soon as it reads it.
        for sig in logs.stop_signals():
            _on_signal(loop, sig, functools.partial(_on_stop_signal, stop, service, sig))
        print(
            f"serving {config.model} ({len(service.backend.classes)} classes, "
            f"{service.backend.image_size} px) on {_address_text(sockets)}; Ctrl-C stops",
            flush=True,
        )
        await stop.wait()
        service.stopping = True
        for site in list(runner.sites):
            await site.stop()  # no new connections; those open still send their bodies
        await service.drain(SHUTDOWN_S)
    finally:
        await runner.cleanup()


def _on_signal(loop: asyncio.AbstractEventLoop, sig: int, then: Callable[[], None]) -> None:
    """Run `then` in the loop when `sig` arrives. Windows' loops have no add_signal_handler:
    there a plain handler hands the signal to the loop."""
    try:
        loop.add_signal_handler(sig, then)
    except NotImplementedError:
        signal.signal(sig, lambda *_: loop.call_soon_threadsafe(then))


SAME_SIGNAL_S = 1.0  # a second like signal sooner is the first one, passed on by a launcher


def _on_stop_signal(stop: asyncio.Event, service: Service, sig: signal.Signals) -> None:
    """The first stop signal: answer the requests in progress, then exit, saying so (it takes
    up to SHUTDOWN_S and the decodes begun). A second: exit now, as one who presses Ctrl-C
    again means; the requests still in progress get no answer."""
    key = "Ctrl-C" if sig == signal.SIGINT else sig.name
    first = service.stopped_by
    # A Ctrl-C typed comes once, and a quick second one is meant; with no terminal nobody typed
    # it, and a launcher (`uv run`) passes on the SIGINT its process group got (a supervisor's).
    passed_on = sig != signal.SIGINT or not _in_foreground()
    if passed_on and first and first[0] == sig and time.monotonic() - first[1] < SAME_SIGNAL_S:
        # One signal to the process group (systemd, `timeout`, a supervisor) reaches this
        # process twice when a launcher (`uv run`) passes it on: one stop, not two.
        return
    if stop.is_set():
        unanswered = counted(service.in_flight, "request")
        log.warning("%s again: stopping now, %s unanswered", key, unanswered)
        os._exit(128 + sig)
    stop.set()
    service.stopped_by = (sig, time.monotonic())
    if service.in_flight:
        answered = f"answering the {counted(service.in_flight, 'request')} in progress first"
        log.warning(
            "%s: stopping, %s (up to %.0f s; %s again stops now)", key, answered, SHUTDOWN_S, key
        )
    else:
        log.warning("%s: stopping (no request in progress)", key)


def _in_foreground() -> bool:
    """Whether a user may have pressed Ctrl-C: this process is in its terminal's foreground
    process group (not a service, `setsid`, CI, a job sent to the background, `timeout`'s own
    group). Windows has no process groups to ask (nor O_NOCTTY): as in a terminal."""
    if not (hasattr(os, "tcgetpgrp") and hasattr(os, "O_NOCTTY")):
        return True
    try:
        tty = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:  # ENXIO: no controlling terminal
        return False
    try:
        return os.tcgetpgrp(tty) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(tty)


def listening_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets listening on `host`: each address the name resolves to, all on one port (0: the
    free port the first one got). `::` takes IPv4 too where the OS allows (one dual-stack socket),
    as `::` means every address on most servers; asyncio's own would be IPv6 only."""
    if host == "::" and socket.has_dualstack_ipv6():
        return [socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, address in dict.fromkeys((info[0], info[4]) for info in infos):
            address = (address[0], port, *address[2:])
            sockets.append(socket.create_server(address, family=family))
            port = sockets[0].getsockname()[1]
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def serve_command(config: ServeConfig) -> int:
    """`visionpipe serve`: 2 if the model cannot be opened or the address not bound."""
    from visionpipe.onnxrt import ModelFileError

    try:
        backend, md5 = open_model(config.model)
    except (FileNotFoundError, ModelFileError) as exc:
        log.error("%s", exc)
        return 2
    warn_if_diverged(backend, config.model)
    quiet_pillow()  # the decodes run in threads, where each cannot quiet its own
    try:
        asyncio.run(run_server(Service(backend, config, md5)))
    except OSError as exc:  # the port is taken, or the host is not this machine's
        log.error("cannot listen on %s:%s: %s", config.host, config.port, _bind_problem(exc))
        return 2
    return 0


def warn_if_diverged(backend: OnnxBackend, path: Path) -> None:
    """Warn when the model's outputs for a grey image are not finite: a model whose training
    diverged answers every image, with null probabilities and no error."""
    grey = np.full((3, backend.image_size, backend.image_size), 128, np.uint8)
    if not np.isfinite(backend.logits(to_model_input([grey]))).all():
        log.warning(
            "%s gives non-finite outputs (NaN) for a grey image: its training diverged "
            "(metrics/train.json: diverged), and every answer's probabilities will be null. "
            "Serve the model of a run that did not diverge",
            path,
        )


def _address_text(sockets: list[socket.socket]) -> str:
    """The URLs to open: a browser refuses http://0.0.0.0/, the address of every interface."""
    urls, every = [], ""
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        ipv6 = sock.family == socket.AF_INET6
        dual = ipv6 and not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        if host in ("0.0.0.0", "::"):
            host = "::1" if ipv6 and not dual else "127.0.0.1"
            every = "IPv4 and IPv6" if dual else "IPv6 only" if ipv6 else "IPv4 only"
        urls.append(f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/")
    text = " and ".join(urls)
    if every:
        text += f" (and this machine's other addresses, {every}, port {port})"
    return text + " "


# What to do about the errors binding an address gives; asyncio's own message repeats the address.
BIND_ADVICE = {
    errno.EADDRINUSE: "another program listens on that port: stop it, or choose another --port "
    "(0 picks a free one)",
    errno.EADDRNOTAVAIL: "--host is not an address of this machine: use 127.0.0.1 (this machine "
    "only) or 0.0.0.0 (every address)",
    errno.EACCES: "ports below 1024 need root: choose --port 1024 or above (the default is 8000)",
}


def _bind_problem(exc: OSError) -> str:
    if exc.errno in BIND_ADVICE:
        return f"{os.strerror(exc.errno).lower()}; {BIND_ADVICE[exc.errno]}"
    if isinstance(exc, socket.gaierror):  # a --host name that does not resolve
        return f"{exc.strerror}; --host takes an IP address or a name of this machine"
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)
