"""Decoding any image a user brings into the RGB uint8 arrays the models see.

Shared by preprocess (training data) and predict (new photos) so both see identical pixels.
Deliberately free of torch: the ONNX predict path must start fast.

Pillow decodes every format. A plain JPEG (8-bit colour, baseline or progressive, with no segment
Pillow would act on: EXIF or XMP, which may rotate it, a multi-picture index, Adobe's marker)
goes to simplejpeg instead, libjpeg-turbo called with the settings Pillow uses (accurate integer
IDCT, smooth chroma upsampling, the same reduced scale): the same pixels, byte for byte (a test
compares them), for a sixth of the time on a 32-pixel image, most of Pillow's being Python
parsing the headers. Anything simplejpeg rejects or warns about goes to Pillow, which decides.
HEIC/HEIF (iPhone photos) reach Pillow through pi-heif's plugin (libheif with libde265's HEVC
decoder), registered when the first such file is met: importing it costs ~10 ms of every start.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import struct
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import PIL
import simplejpeg
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

# .jpe, .jfif, .pjpeg and .pjp are JPEGs too: Windows and browsers save photos from the web so;
# .mpo is a 3D camera's JPEG pair; iPhones save HEIC, Canon and Sony cameras their HEIF as
# .HIF; .apng is an animated PNG.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".pjpeg", ".pjp", ".mpo", ".png", ".apng", ".bmp", ".gif"}
    | {".tif", ".tiff", ".webp", ".avif", ".heic", ".heif", ".hif", ".ppm", ".pgm", ".pbm"}
)
# The major brands of the ISO media files pi-heif opens (its _is_supported_heif): HEVC stills,
# sequences (a burst), and the generic mif1/msf1. AVIF (avif, avis) is Pillow's own, and so is a
# mif1/msf1 file whose compatible brands say AVIF: pi-heif, built without an AV1 decoder, fails
# on it where Pillow's AVIF plugin reads it.
_HEIF_BRANDS = tuple(b"heic heix heim heis hevc hevx hevm hevs mif1 msf1".split())
_AVIF_BRANDS = (b"avif", b"avis")
_HEVC = _HEIF_BRANDS[:8]  # the brands of HEVC coding, not the generic mif1/msf1
# Images that would decode to more pixels than this are refused: decoding a 10000x10000 image takes
# ~300 MB and is usually a mistake or a decompression bomb. A JPEG decoded at reduced scale for a
# target size counts the pixels of that decode: a 200-megapixel phone photo for 64 px decodes at
# 1/8 scale, 3 megapixels.
MAX_PIXELS = 64_000_000
MAX_JPEG_SCANS = 100  # of a progressive JPEG (`_jpeg_scans`); encoders write about 10
# A JPEG is decoded at reduced scale only down to DRAFT_GAP times the target size, the rest left
# to the resize filter: Pillow's own Image.thumbnail default (reducing_gap=2.0), "very close to
# fair resampling". Measured here against a full decode + resize: see bench/RESULTS.md.
DRAFT_GAP = 2.0


class Unread(bytes):
    """The bytes of a file left unread (an archive member larger than any image): none, and
    why, which its decode gives as an undecodable image's reason."""

    reason: str

    def __new__(cls, reason: str) -> Unread:
        unread = super().__new__(cls, b"")
        unread.reason = reason
        return unread

    def __reduce__(self) -> tuple[type[Unread], tuple[str]]:  # to a worker process, with why
        return Unread, (self.reason,)


class BadImageError(ValueError):
    """An image file that cannot be turned into RGB pixels; `reason` says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


# Folders that file systems and NAS boxes add beside the photos: Synology's @eaDir holds a
# thumbnail of every photo (IMG_1.jpg/SYNOFILE_THUMB_M.jpg), which would become a class of its
# own or a second copy of a photo in its class, possibly in another split.
_SYSTEM_FOLDERS = ("__MACOSX", "@eaDir", "#recycle", "$RECYCLE.BIN", "System Volume Information")
_SYSTEM_MARKS = tuple(f"/{folder}/" for folder in _SYSTEM_FOLDERS)
# Windows Explorer's, and Finder's custom folder icon ("Icon\r", empty; sync tools drop it).
_SYSTEM_FILES = frozenset({"thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})


def is_hidden(name: str) -> bool:
    """A posix path with a part starting with '.' (`.DS_Store`, `._IMG_1.jpg`, `.git/`), a
    system folder (`_SYSTEM_FOLDERS`) part, or an Explorer or Finder file: not a photo."""
    path = f"/{name}/"
    if "/." in path or any(mark in path for mark in _SYSTEM_MARKS):
        return True
    return name.rpartition("/")[2].lower() in _SYSTEM_FILES


# What iCloud Drive leaves of a file it keeps only online ("Optimize Mac Storage"), as `cp` or
# rsync copy it: a hidden `.IMG_1.HEIC.icloud` of a few hundred bytes, not the photo.
_ICLOUD_PLACEHOLDER = re.compile(r"(?:^|/)\.([^/]+)\.icloud$")


def icloud_placeholder(name: str) -> str | None:
    """The photo that `name` stands for where it is iCloud Drive's placeholder of one not
    downloaded (`cats/.IMG_1.HEIC.icloud` -> `IMG_1.HEIC`); None for any other name."""
    found = _ICLOUD_PLACEHOLDER.search(name)
    return found[1] if found and is_image_name(found[1]) else None


# What to do with a scanner's DICOM files, which no reader here opens.
DICOM_EXPORT = (
    "export them as PNG or TIFF, stretched to the full 16 bits or windowed to 8 (docs/"
    "datasets.md, 16-bit and scientific images)"
)


DICOM_NOT_READ = f"DICOM scans are not read: {DICOM_EXPORT}"


def is_dicom(head: bytes) -> bool:
    """Whether a file's first bytes are DICOM's: a 128-byte preamble, then `DICM`."""
    return head[128:132] == b"DICM"


DICOM_PEEKS = 20  # files that `may_be_dicom` whose first bytes are read to tell DICOM


def may_be_dicom(name: str) -> bool:
    """Whether a file not named as DICOM may still be a scan, worth its first bytes: a disc's
    `IM_0001`, with no suffix, or a PACS export named by its instance UID
    (`1.2.840.113619.2.55.3.604688119.969.1268071029.320`), whose "suffix" is digits."""
    suffix = os.path.splitext(os.path.basename(name))[1]
    return not suffix or suffix[1:].isdigit()


def dicom_by_bytes(files: Iterable[tuple[str, str | os.PathLike[str]]]) -> list[str]:
    """The names among `files` (name, path on disk) that `may_be_dicom` whose first bytes are
    DICOM's, the first DICOM_PEEKS of them looked at."""
    peeked = [(name, path) for name, path in files if may_be_dicom(name)][:DICOM_PEEKS]
    scans = []
    for name, path in peeked:
        with contextlib.suppress(OSError), open(path, "rb") as f:
            if is_dicom(f.read(132)):
                scans.append(name)
    return scans


def is_dicom_name(name: str) -> bool:
    """Whether a file is named as DICOM's are: `.dcm`, a disc's DICOMDIR index."""
    base = os.path.basename(name)
    return base.lower().endswith(".dcm") or base.upper() == "DICOMDIR"


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES  # Path(name).suffix, 5x faster


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        # convert('RGB') clips 16-bit values at 255; scale to 8 bits instead.
        arr8 = (np.asarray(img, dtype=np.uint32) * 255 // 65535).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "I":
        arr8 = _int32_to_8bit(np.asarray(img), 65535 if _sixteen_bit(img) else None)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(_float_to_8bit(np.asarray(img)), mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's warning about palette transparency
    # The tutorial's convert('RGB'): alpha is dropped, L/P/CMYK/YCbCr are converted.
    return img.convert("RGB")


# Rows converted at a time from 32-bit pixels to 8 bits: the float temporaries of a whole
# 64-megapixel image would take gigabytes, of a block about 8 MB each.
BLOCK_PIXELS = 1 << 20


def _row_blocks(arr: np.ndarray) -> Iterator[slice]:
    rows = max(1, BLOCK_PIXELS // max(1, arr.size // max(1, arr.shape[0])))
    return (slice(start, start + rows) for start in range(0, arr.shape[0], rows))


def _sixteen_bit(img: Image.Image) -> bool:
    """Whether Pillow's 32-bit integer image holds 16-bit samples: a 16-bit PGM (Pillow scales
    its maxval to 65535) or a signed 16-bit TIFF. Those take the 16-bit PNG's scale, so the same
    scan reads alike in each format; only true 32-bit images are scaled by their own peak."""
    if img.format == "PPM":
        return True
    tags = getattr(img, "tag_v2", None)
    return img.format == "TIFF" and tags is not None and tags.get(258) in (16, (16,))


def _int32_to_8bit(arr: np.ndarray, full: int | None = None) -> np.ndarray:
    """32-bit integer pixels -> uint8: [0, full] scaled down, or [0, max(1, peak)] with no
    `full`; negatives black. In float64, exact for every int32: in 32 bits a negative would
    wrap to white and a value above 16.8 million overflow when multiplied by 255."""
    peak = float(full) if full else max(float(arr.max(initial=0)), 1.0)
    out = np.empty(arr.shape, np.uint8)
    for rows in _row_blocks(arr):
        values = np.maximum(arr[rows].astype(np.float64), 0.0)
        out[rows] = np.floor(values * 255 / peak)  # 255 first: the peak gives 255
    return out


def _float_to_8bit(arr: np.ndarray) -> np.ndarray:
    """Float pixels -> uint8: [0, max(1, peak)] scaled, the peak the largest finite value.
    convert('RGB') rounds each float: a TIFF of values in [0, 1] (what scientific cameras and
    numpy exports write) would turn black. +inf is the peak and nan or -inf black: one +inf taken
    as the peak would turn all the others black."""
    blocks = list(_row_blocks(arr))
    finite_max = (float(arr[r].max(initial=0.0, where=np.isfinite(arr[r]))) for r in blocks)
    peak = max([1.0, *finite_max])
    out = np.empty(arr.shape, np.uint8)
    for rows in blocks:
        block = arr[rows]
        finite = np.isfinite(block)
        values = np.where(finite, block, np.where(block == np.inf, np.float32(peak), np.float32(0)))
        # Scaled in float32: its rounding is part of the bytes every float TIFF decodes to.
        out[rows] = np.clip(np.rint(values.astype(np.float32) * (255 / peak)), 0, 255)
    return out


# Where Pillow's getexif() finds an orientation: without any of these an image is upright, and
# skipping exif_transpose saves a tenth of the decode time of a small JPEG.
_ORIENTATION_SOURCES = frozenset({"exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp"})


def _may_be_rotated(img: Image.Image) -> bool:
    return hasattr(img, "tag_v2") or not _ORIENTATION_SOURCES.isdisjoint(img.info)


def decode_rgb(data: bytes, name: str, size: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB PIL image, EXIF orientation applied.

    With `size`, a JPEG is decoded at the smallest of 1/1, 1/2, 1/4 or 1/8 scale whose shorter
    side keeps at least DRAFT_GAP x `size` pixels (libjpeg's scaled IDCT, `Image.draft`): a
    12-megapixel photo meant for 224 pixels decodes at 1/4 scale, several times faster. Other
    formats decode at full size. Raises BadImageError naming the file for empty, truncated,
    non-image or oversized input.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):  # a path, a PIL image, an array, an open file
        raise TypeError(
            f"decode_rgb and load_array take an image file's bytes, not a {type(data).__name__}:"
            " for a file, images.read_image_file(path, size); for a PIL image, its bytes as"
            " saved (img.save(buf, 'PNG'))"
        )
    with _no_bomb_warning():
        return _decode_rgb(data, name, size)


@contextlib.contextmanager
def _no_bomb_warning() -> Iterator[None]:
    """Pillow's warnings left out while decoding. Our own MAX_PIXELS check gives the clearer
    message, and Pillow's words on a damaged file's tags and EXIF name no file: the image reads
    or is named bad, with its name. Entered once per batch, not per image. Only in the main
    thread: catch_warnings swaps the process's filters, and threads that overlap (before Python
    3.14) can leave each other's in place for good; serve quiets its threads once
    (`quiet_pillow`)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings():
        quiet_pillow()
        yield


def quiet_pillow() -> None:
    """Leave out Pillow's warnings (see `_no_bomb_warning`) in this process from now on."""
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="PIL")


def _decode_rgb(data: bytes, name: str, size: int | None) -> Image.Image:
    if data.startswith(b"\xff\xd8") and (scans := _jpeg_scans(data)) > MAX_JPEG_SCANS:
        # Each scan of a progressive JPEG decodes the whole image again: 870,000 scans of 12
        # bytes, a 10 MB file, take 30 s even of a 256x256 image (libjpeg-turbo's LJT-01-004).
        raise BadImageError(
            name,
            f"a JPEG of {scans:,} scans, above the {MAX_JPEG_SCANS} limit (encoders write about"
            " 10; more make its decode take minutes): re-save it",
        )
    pixels = _decode_plain_jpeg(data, size)
    if pixels is not None:
        return Image.fromarray(pixels)
    return _decode_with_pillow(data, name, size)


def _jpeg_scans(data: bytes) -> int:
    """The scans of a progressive JPEG's first image (1 for a sequential one), counted up to
    MAX_JPEG_SCANS + 1 by walking its segments: those of other data (EXIF, an ICC profile, a
    maker's notes) skipped by their length, each scan's coded data up to the next marker (an FF
    not followed by 00, the stuffing of a coded FF, nor by a restart marker), none after the end
    of image (a phone's motion photo puts a video there)."""
    i, scans, n, progressive = 2, 0, len(data), False
    while i + 4 <= n and data[i] == 0xFF and scans <= MAX_JPEG_SCANS:
        marker = data[i + 1]
        if marker == 0xD9:  # end of image
            break
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill, RSTn, TEM
            i += 1 if marker == 0xFF else 2
            continue
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        progressive |= marker in _SOF_PROGRESSIVE
        if marker != 0xDA:
            continue
        scans += 1
        if not progressive:
            # A sequential scan codes every block of its components in a bit or more, so its
            # decode time follows the file's size; only a progressive one can cover the image
            # in a few bytes (end-of-band runs). The walk below costs 8 ms of a 12-MP photo.
            break
        while (i := data.find(b"\xff", i)) >= 0 and i + 1 < n:
            following = data[i + 1]
            if following == 0xFF:
                i += 1
            elif following == 0x00 or 0xD0 <= following <= 0xD7:
                i += 2
            else:
                break  # the next marker
        if i < 0:
            break
    return scans


def _draft_gap(size: int | None) -> int:
    return round(size * DRAFT_GAP) if size is not None else 0


def _draft_scale(w: int, h: int, size: int | None) -> int:
    """The reduced scale (1, 2, 4 or 8) `img.draft(None, (gap, gap))` picks: Pillow's rule."""
    gap = _draft_gap(size)
    if not gap or min(w, h) < 2 * gap:  # no 1/2 scale fits
        return 1
    fits = min(w // gap, h // gap)
    return next(s for s in (8, 4, 2, 1) if fits >= s)


def _draft_shape(w: int, h: int, size: int | None) -> tuple[int, int]:
    """(H, W) of a w x h JPEG decoded at its draft scale for `size`."""
    scale = _draft_scale(w, h, size)
    return -(-h // scale), -(-w // scale)  # libjpeg rounds scaled sizes up, as Pillow does


def _decode_plain_jpeg(data: bytes, size: int | None) -> np.ndarray | None:
    """(H, W, 3) pixels of a plain JPEG, as Pillow decodes them (with its draft scale for
    `size`); None for anything else, which Pillow then decodes."""
    found = _plain_jpeg_frame(data)
    if found is None:
        return None
    w, h, progressive = found
    want = _draft_shape(w, h, size)
    if _held_pixels(w, h, size, progressive) > MAX_PIXELS:
        return None  # Pillow's path refuses it, naming the limit
    try:
        pixels = simplejpeg.decode_jpeg(data, "RGB", min_height=want[0], min_width=want[1])
    except ValueError:  # corrupt, truncated, or a warning simplejpeg treats as an error
        return None
    return pixels if pixels.shape[:2] == want else None


_SOF_PLAIN = (0xC0, 0xC1, 0xC2)  # baseline, extended and progressive Huffman frames
_SOF_PROGRESSIVE = frozenset({0xC2, 0xC6, 0xCA, 0xCE})  # Huffman and arithmetic, any hierarchy
_SOF_OTHER = frozenset(range(0xC3, 0xD0)) - {0xC4, 0xC8, 0xCC}  # lossless, arithmetic, ...
_APP_PILLOW_ACTS_ON = (0xE1, 0xEE)  # EXIF/XMP (rotation), Adobe (colour transform)


def _plain_jpeg_frame(data: bytes) -> tuple[int, int, bool] | None:
    """(width, height, progressive) of a plain JPEG (see the module docstring), by walking its
    header segments up to the first scan; None for anything else."""
    if not data.startswith(b"\xff\xd8"):
        return None
    found, i = None, 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the header is complete
            return found
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        body = data[i + 4 : i + 2 + length]
        if length < 2 or len(body) < length - 2:  # malformed or truncated: Pillow says which
            return None
        if marker in _APP_PILLOW_ACTS_ON or marker in _SOF_OTHER:
            return None
        if marker == 0xE2 and body.startswith(b"MPF\0"):  # Pillow opens it as MPO
            return None
        if marker in _SOF_PLAIN:
            # 8-bit samples, 3 channels (YCbCr or RGB), a size in the header, one frame
            if found is not None or len(body) < 6 or body[0] != 8 or body[5] != 3:
                return None
            w, h = int.from_bytes(body[3:5], "big"), int.from_bytes(body[1:3], "big")
            if not w or not h:
                return None
            found = (w, h, marker == 0xC2)
        i += 2 + length
    return None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def header_pixels(data: bytes) -> int | None:
    """Width x height of a PNG or a plain JPEG, read from its header without decoding it: how much
    work its decode is. None for other formats and for headers that do not say."""
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big") * int.from_bytes(data[20:24], "big")
    found = _plain_jpeg_frame(data)
    return found[0] * found[1] if found is not None else None


def decode_pixels(data: bytes, size: int) -> int:
    """How many pixels decoding `data` for `size` holds (a baseline JPEG's at the reduced scale
    it decodes at), from its header alone; 0 where the header does not open (the decode then
    says why)."""
    try:
        with _no_bomb_warning():
            return _decoded_pixels(_open_image(data), size)
    except Exception:  # any reason the header does not open: the decode names it
        return 0


def _decode_with_pillow(data: bytes, name: str, size: int | None) -> Image.Image:
    if isinstance(data, Unread):
        raise BadImageError(name, data.reason)
    if not data:
        raise BadImageError(name, "empty file (0 bytes)")
    try:
        img = _decoded(data, name, size)
        if _may_be_rotated(img):
            _turn_upright(img, name)
        return _to_rgb(img)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(name, _unidentified_reason(data)) from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(name, _bomb_reason(exc)) from None
    except ValueError as exc:
        # A PNG whose text (an editor's XMP history) or colour profile unpacks past Pillow's
        # limits on them: the pixels are fine, the text and the profile unused.
        limit = "MAX_TEXT_CHUNK" in str(exc) or "MAX_TEXT_MEMORY" in str(exc)
        if limit and (plain := _without_png_text(data)) != data:
            return _decode_with_pillow(plain, name, size)
        raise BadImageError(name, f"cannot decode: {str(exc).strip()}") from None
    except (OSError, SyntaxError, RuntimeError) as exc:
        # RuntimeError: Pillow's AVIF and HEIF plugins' word for a damaged file, or one in a
        # codec this build lacks.
        raise BadImageError(name, f"cannot decode: {str(exc).strip()}") from None


PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt", b"iCCP")  # and the profile, never applied


def _without_png_text(data: bytes) -> bytes:
    """A PNG's bytes without its text chunks and colour profile (each chunk carries its own
    CRC: the others stay valid); other data as it is."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    kept, at = [PNG_SIGNATURE], len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        end = at + 12 + int.from_bytes(data[at : at + 4], "big")  # length, type, data, CRC
        if data[at + 4 : at + 8] not in PNG_TEXT_CHUNKS:
            kept.append(data[at:end])
        at = end
    return b"".join(kept)


def _turn_upright(img: Image.Image, name: str) -> None:
    """Apply the EXIF rotation in place (no copy when upright). Pillow's EXIF parser meets a
    damaged block's bytes with any error (TypeError, struct.error): the file's, not a bug."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except MemoryError:
        raise
    except Exception as exc:
        why = f"cannot read its EXIF rotation: {type(exc).__name__}: {exc}"
        raise BadImageError(name, why) from None


def _decoded(data: bytes, name: str, size: int | None) -> Image.Image:
    """The image of `data`, decoded (truncation surfaces here, not later), at reduced scale
    where a JPEG allows it."""
    img = _open_image(data)
    w, h = img.size
    if _decoded_pixels(img, size) > MAX_PIXELS:
        raise BadImageError(
            name,
            f"image is {w}x{h} ({w * h:,} pixels), above the {MAX_PIXELS:,} limit; "
            "downscale it first",
        )
    gap = _draft_gap(size)
    if gap and min(w, h) >= 2 * gap:  # a 1/2 scale fits; a no-op for non-JPEGs
        img.draft(None, (gap, gap))
    try:
        img.load()
    except (MemoryError, OSError, SyntaxError, ValueError, RuntimeError):
        raise  # the caller's words for these
    except Exception as exc:  # a decoder's other words for damaged bytes: libheif's EOFError,
        # a ZeroDivisionError of Pillow's AVIF frame timing; one bad file stops nothing else
        raise BadImageError(name, f"cannot decode: {type(exc).__name__}: {exc}") from None
    return img


def _bomb_reason(exc: Image.DecompressionBombError) -> str:
    """Why an image whose plugin checks its size itself as it reads the header (WebP's) is
    refused: its pixels, from Pillow's message, and the limit it is above."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f" ({int(found[1]):,} pixels)" if found else ""
    # It is above Pillow's limit (2 x MAX_IMAGE_PIXELS), so above the smaller of the two.
    limit = min(MAX_PIXELS, 2 * (Image.MAX_IMAGE_PIXELS or MAX_PIXELS))
    return f"image{pixels} is above the {limit:,} limit; downscale it first"


def _open_image(data: bytes) -> Image.Image:
    """Image.open, except that an image above Pillow's decompression-bomb size opens too (its
    header only): MAX_PIXELS then refuses it in the project's words, or, for a JPEG decoded at
    reduced scale, bounds the pixels that decode makes."""
    if _is_heif(data):
        _register_heif()
    # Once pi-heif is registered it would claim a mif1 AVIF before Pillow's plugin does.
    formats = ["AVIF"] if _is_avif(data) else _read_formats()
    if formats == ["AVIF"] and "AVIF" not in _read_formats():
        # The package asks for Pillow 11.3, but an environment may hold an older or a distro's
        # build without libavif: the file is fine, this Pillow cannot read it.
        raise OSError(
            f"an AVIF photo, which this Pillow {PIL.__version__} cannot read: AVIF needs "
            "Pillow 11.3 or later with AVIF support (`pip install -U pillow`)"
        )
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError:
        if data.startswith(b"\xff\xd8"):
            return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
        img = _open_past_bomb_check(data, formats)
        if img is None:
            raise
        return img


# The formats of IMAGE_SUFFIXES by Pillow's names (a camera's MPO opens as JPEG, a BMP may be
# a DIB), whatever a file's name says. Pillow's other plugins never see a file's bytes: they
# include EPS, which hands them to Ghostscript (`gs`), a program with a history of escapes, and
# readers of formats no photo comes in.
READ_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "DIB", "TIFF", "WEBP", "AVIF", "HEIF", "PPM")


def _read_formats() -> list[str]:
    """READ_FORMATS that this Pillow has (HEIF once pi-heif is registered)."""
    Image.init()
    return [f for f in READ_FORMATS if f in Image.OPEN]


def _open_past_bomb_check(data: bytes, formats: list[str]) -> Image.Image | None:
    """What Image.open's plugin loop opens, without its size check: the first plugin (in
    Pillow's order) that accepts the file and reads its header. None if none does."""
    for fmt in formats:
        factory, accept = Image.OPEN[fmt]
        if accept is not None and not accept(data[:16]):
            continue
        with contextlib.suppress(SyntaxError, IndexError, TypeError, ValueError, OSError):
            return factory(io.BytesIO(data), "")
    return None


def _is_heif(data: bytes) -> bool:
    """An ISO media file (ftyp box) of a HEIF brand, not AVIF, whatever its file name says."""
    return data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS and not _is_avif(data)


def _is_avif(data: bytes) -> bool:
    """An ISO media file of an AVIF brand, major or (for the generic mif1/msf1) compatible."""
    if data[4:8] != b"ftyp":
        return False
    if data[8:12] in _AVIF_BRANDS:
        return True
    end = min(int.from_bytes(data[:4], "big"), len(data), 256)  # the ftyp box's end
    compatible = {data[i : i + 4] for i in range(16, end - 3, 4)}
    generic = data[8:12] in (b"mif1", b"msf1")
    return generic and not compatible.isdisjoint(_AVIF_BRANDS) and compatible.isdisjoint(_HEVC)


@functools.cache
def _register_heif() -> None:
    """Let Pillow open HEIF, once per process. libheif applies the file's rotation ('irot',
    'imir') as it decodes and the plugin sets the EXIF orientation to 1, so exif_transpose
    leaves the picture as a phone shows it instead of turning it a second time. Thumbnails,
    depth maps and auxiliary images are not read: only the primary picture is decoded."""
    import pi_heif

    pi_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)


def _decoded_pixels(img: Image.Image, size: int | None) -> int:
    """How many pixels decoding `img` for `size` holds in memory (`_held_pixels`)."""
    w, h = img.size
    if img.format not in ("JPEG", "MPO"):
        return w * h
    return _held_pixels(w, h, size, bool(img.info.get("progressive")))


def _held_pixels(w: int, h: int, size: int | None, progressive: bool) -> int:
    """How many pixels decoding a w x h JPEG for `size` holds: its draft scale divides the sides
    of a baseline one, but libjpeg keeps every coefficient of a progressive one at full size
    (3 to 6 bytes a pixel) to add each scan to: a 1.5 MB progressive file claiming 32000x32000
    would take gigabytes, whatever the scale."""
    if progressive:
        return w * h
    height, width = _draft_shape(w, h, size)
    return height * width


def _unidentified_reason(data: bytes) -> str:
    if _is_heif(data):
        return _heif_reason(data)
    archive = next(
        (kind for magic, at, kind in _ARCHIVE_MAGIC if data[at:].startswith(magic)), None
    )
    if archive is not None:
        return f"a {archive} archive, not an image: unpack it and give its images or folder"
    if data.startswith(b"\x00\x05\x16\x07"):  # AppleDouble's magic number
        return (
            "a Mac's metadata file (AppleDouble: the ._ file a Mac writes beside a photo on a"
            " disk or share it does not format), not a photo: leave it out (folders pass them over)"
        )
    if is_dicom(data):
        return f"a DICOM scan, a format not read here: {DICOM_EXPORT}"
    if _is_video(data):  # a phone's live-photo .MOV beside its photo, a clip in the folder
        return (
            "a video, not an image: give a frame of it as a photo (ffmpeg -i VIDEO -frames:v 1"
            " frame.jpg)"
        )
    named = (f for f in NAMED_FORMATS if f in Image.OPEN)
    other = next((f for f in named if _accepts(Image.OPEN[f][1], data[:16])), None)
    if data[:4] in (b"II*\0", b"MM\0*") and _tiff_float_samples(data):  # no mode Pillow has
        return (
            "a TIFF of floating-point samples Pillow cannot read (colour, 64-bit or 16-bit"
            " floats): save it with 8- or 16-bit integer samples"
        )
    # A format read here by its first bytes, whose header does not read on.
    ours = next((f for f in _read_formats() if _accepts(Image.OPEN[f][1], data[:16])), None)
    if ours is not None:
        return f"a damaged or truncated {ours} image (its header does not read)"
    if other is not None:  # told by its first bytes alone: its plugin never opens it
        return (
            f"its bytes are {other}, a format not read here: convert it to JPEG, PNG, WebP, "
            "TIFF, HEIC or AVIF"
        )
    return "not a recognised image format"


# Formats told by their first bytes surely enough to name one (TGA has no such bytes, and a
# CUR's four are a TGA's too).
NAMED_FORMATS = ("EPS", "JPEG2000", "PSD", "ICO", "ICNS", "DDS", "QOI", "FITS", "BLP", "SGI")


def _tiff_float_samples(data: bytes) -> bool:
    """Whether a TIFF's first image has floating-point samples (SampleFormat 3), as its header
    says; False where the header does not read."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(f"{order}I", data, 4)
        (count,) = struct.unpack_from(f"{order}H", data, ifd)
        for at in range(ifd + 2, ifd + 2 + 12 * min(count, 512), 12):
            tag, kind, n = struct.unpack_from(f"{order}HHI", data, at)
            if tag == 339 and kind == 3:  # SampleFormat, SHORTs: in the entry, or where it says
                (where,) = struct.unpack_from(f"{order}I", data, at + 8) if n > 2 else (at + 8,)
                return struct.unpack_from(f"{order}H", data, where)[0] == 3
    except struct.error:
        return False
    return False


def _accepts(accept: Callable[[bytes], object] | None, prefix: bytes) -> bool:
    """Whether a Pillow plugin's check of a file's first bytes takes `prefix` as its format's."""
    try:
        return accept is not None and bool(accept(prefix))
    except Exception:  # a plugin's check is its own code: a failure is a no
        return False


def _heif_reason(data: bytes) -> str:
    """Why a HEIF file did not open: libheif's words, which Pillow's open does not keep."""
    import pi_heif

    try:
        pi_heif.open_heif(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError, RuntimeError) as exc:
        # libheif's categories: "Invalid input: ..." for a broken file, "Unsupported ...: ..."
        # for a codec or feature this build lacks.
        if str(exc).startswith("Invalid input"):
            return f"damaged or truncated HEIC/HEIF image: {exc}"
        return f"HEIC/HEIF image that libheif cannot read: {exc}"
    return "HEIC/HEIF image that libheif opens but Pillow does not"


def _is_video(data: bytes) -> bool:
    """MP4/MOV (an ISO media file, or QuickTime's older atoms first), Matroska/WebM or AVI."""
    iso = data[4:8] == b"ftyp" and not _is_heif(data) and not _is_avif(data)
    quicktime = data[4:8] in (b"moov", b"mdat", b"wide", b"free")
    return (
        iso
        or quicktime
        or data.startswith(b"\x1a\x45\xdf\xa3")
        or data[:4] + data[8:12] == b"RIFFAVI "
    )


# An archive given where an image is expected (`visionpipe predict photos.zip`): its magic bytes,
# their offset, and its kind.
_ARCHIVE_MAGIC = ((b"PK\x03\x04", 0, "zip"), (b"\x1f\x8b", 0, "gzip"), (b"ustar", 257, "tar"))


# An image whose resized long side would exceed this many times the target size (an aspect ratio
# beyond 32:1, past every photo, phone panorama and web banner) resizes only the centre square.
# Resizing the whole of a 1,000,000x1 strip for 64 px would take ~18 GB. Only there: Pillow takes
# the box in single precision, so its filter positions differ in the last bits and ~0.5% of an
# ordinary photo's bytes would move by 1, and every photo would preprocess to other bytes.
MAX_CROP_RATIO = 32


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to `size`, then center-crop to `size` x `size`."""
    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    if max(nw, nh) > MAX_CROP_RATIO * size:
        # The same crop in source coordinates: only size x size pixels are computed.
        box = (left * w / nw, top * h / nh, (left + size) * w / nw, (top + size) * h / nh)
        return img.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
    return bilinear(img, (nw, nh)).crop((left, top, left + size, top + size))


def bilinear(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Pillow's BILINEAR resize to `size`, its horizontal pass always first.

    A resize is two passes, each rounded to 8 bits, so their order changes the bytes; Pillow
    chooses it itself (13.0 runs some tall images vertical pass first). One resize call per
    axis fixes it, for the same work, so that the bytes stay the same across Pillow versions and
    ports of this resize (docs/web/visionpipe.mjs) can match them exactly. (Beyond
    MAX_CROP_RATIO, `resize_center_crop` resizes the centre square in one call instead.)
    """
    if size[0] != img.width:
        img = img.resize((size[0], img.height), Image.Resampling.BILINEAR, reducing_gap=None)
    if size[1] != img.height:
        img = img.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
    return img


def _hwc(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> (H, W, 3) uint8 view of its bytes (faster than np.asarray's protocol)."""
    return np.frombuffer(img.tobytes(), np.uint8).reshape(img.height, img.width, 3)


def to_chw(img: Image.Image) -> np.ndarray:
    """RGB PIL image -> contiguous (3, H, W) uint8 array."""
    return np.ascontiguousarray(_hwc(img).transpose(2, 0, 1))


def load_array(data: bytes, name: str, size: int) -> np.ndarray:
    """Bytes of any image -> (3, size, size) uint8, exactly as preprocess and predict see it."""
    return to_chw(resize_center_crop(decode_rgb(data, name, size), size))


# An image at least this many times as long as it is wide (or the reverse) loses half of itself
# or more to the centre square: a panorama, a screenshot of a phone's screen, a banner.
WIDE_RATIO = 2


def decode_batch(
    items: Sequence[tuple[str, bytes]], size: int
) -> tuple[np.ndarray, list[tuple[int, str]], list[int]]:
    """Decode `(name, bytes)` pairs into one (n, 3, size, size) uint8 array: preprocess's unit
    of work in a worker process. The row of an image that fails stays zero; the failures come
    back as (row, reason); then the rows of images WIDE_RATIO times as long as wide."""
    hwc = np.zeros((len(items), size, size, 3), np.uint8)
    failed, wide = [], []
    with _no_bomb_warning():
        for row, (name, data) in enumerate(items):
            try:
                hwc[row], long = _decode_hwc(data, name, size)
            except BadImageError as exc:
                failed.append((row, exc.reason))
                continue
            if long:
                wide.append(row)
    # One reordering copy per chunk: per image, a transpose costs more than decoding a
    # 32-pixel JPEG.
    return np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)), failed, wide


def _decode_hwc(data: bytes, name: str, size: int) -> tuple[np.ndarray, bool]:
    """load_array's pixels, in (size, size, 3) order (a plain JPEG of that size as it is), and
    whether the image is WIDE_RATIO times as long as it is wide."""
    pixels = _decode_plain_jpeg(data, size)
    if pixels is not None and pixels.shape[:2] == (size, size):
        return pixels, False
    img = Image.fromarray(pixels) if pixels is not None else _decode_with_pillow(data, name, size)
    long = max(img.size) >= WIDE_RATIO * min(img.size)
    return _hwc(resize_center_crop(img, size)), long


def to_model_input(arrays: list[np.ndarray]) -> np.ndarray:
    """(3, H, W) uint8 arrays -> one float32 NCHW batch in [0, 1], as the models take it.

    The numpy twin of visionpipe.models.to_input, for the predict path that never imports torch:
    both divide the float32 pixels by 255, so they give identical values.
    """
    return np.stack(arrays).astype(np.float32) / np.float32(255)


def read_image_file(path: str | Path, size: int) -> np.ndarray:
    """An image file -> (3, size, size) uint8, as preprocess and predict see it: for a model.pt
    in a notebook, `model(models.to_input(torch.from_numpy(pixels)[None]))`."""
    path = Path(path)  # a notebook passes the path as typed, a str
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadImageError(str(path), f"cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the name, which no file has
        raise BadImageError(str(path), f"cannot read: {exc}") from None
    return load_array(data, str(path), size)
