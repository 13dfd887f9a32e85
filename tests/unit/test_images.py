import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionpipe import images
from visionpipe.images import BadImageError, decode_rgb, load_array, resize_center_crop


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "PNG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("CMYK", "JPEG"),
        ("1", "PNG"),
        ("I;16", "PNG"),
        ("RGB", "JPEG"),
        ("L", "JPEG"),
        ("RGB", "WEBP"),
        ("RGB", "BMP"),
    ],
)
def test_every_mode_becomes_rgb(mode: str, fmt: str) -> None:
    img = Image.new(mode, (40, 30))
    out = decode_rgb(_encode(img, fmt), f"x.{fmt.lower()}")
    assert out.mode == "RGB" and out.size == (40, 30)


def test_palette_with_transparency_and_16_bit_keep_their_values() -> None:
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    rgb = decode_rgb(_encode(pal, "PNG", transparency=0), "p.png")
    assert rgb.getpixel((0, 0)) == (200, 100, 50)
    deep = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert decode_rgb(_encode(deep, "PNG"), "d.png").getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ((-1000, 0, 500, 1000), (0, 0, 127, 255)),  # negatives black, not wrapped
        ((0, 50_000_000, 99_999_999, 100_000_000), (0, 127, 254, 255)),  # 255 x value fits
        ((0, 3, 7, 65_535), (0, 0, 0, 255)),
    ],
)
def test_32_bit_integer_tiffs_scale_from_zero_to_their_peak(
    values: tuple[int, ...], expected: tuple[int, ...]
) -> None:
    assert _tiff_row(values, np.int32, "I") == [(v, v, v) for v in expected]


def test_a_16_bit_scan_reads_alike_in_every_format() -> None:
    # A scanner's export as PNG, TIFF (unsigned or signed) or PGM: one scale, 0-65535, so a model
    # trained on one format's files sees the same pixels in another's.
    import cv2

    values = np.array([[0, 1413, 8000, 15805, 32767]], np.uint16)
    files = {
        "png": _encode(Image.fromarray(values), "PNG"),
        "u16.tif": cv2.imencode(".tiff", values)[1].tobytes(),
        "s16.tif": cv2.imencode(".tiff", values.astype(np.int16))[1].tobytes(),
        "pgm": _encode(Image.fromarray(values), "PPM"),
    }
    expected = [(v, v, v) for v in (0, 5, 31, 61, 127)]
    for name, data in files.items():
        rgb = decode_rgb(data, f"scan.{name}")
        assert [rgb.getpixel((x, 0)) for x in range(values.size)] == expected, name


def test_a_float_tiff_peaks_at_its_largest_finite_value() -> None:
    values = (0.0, 0.5, 1.0, 2.0, np.inf, np.nan, -np.inf)
    expected = (0, 64, 128, 255, 255, 0, 0)
    assert _tiff_row(values, np.float32, "F") == [(v, v, v) for v in expected]


@pytest.mark.parametrize(
    ("values", "expected"), [((0.0, 0.5, 1.0), (0, 128, 255)), ((0.0, 100.0, 400.0), (0, 64, 255))]
)
def test_float_tiffs_are_scaled_not_rounded_to_black(
    values: tuple[float, ...], expected: tuple[int, ...]
) -> None:
    assert _tiff_row(values, np.float32, "F") == [(v, v, v) for v in expected]


def _tiff_row(values: tuple[float, ...], dtype: type, mode: str) -> list[tuple[int, ...]]:
    """The RGB pixels a one-row TIFF of `values` decodes to."""
    img = Image.fromarray(np.array([values], dtype=dtype), mode=mode)
    rgb = decode_rgb(_encode(img, "TIFF"), f"{mode}.tif")
    return [rgb.getpixel((x, 0)) for x in range(len(values))]


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_rgb(_encode(img, "JPEG", exif=exif.tobytes()), "rot.jpg")
    assert out.size == (20, 40)


def test_a_dicom_scan_is_named_with_how_to_read_it() -> None:
    scan = bytes(128) + b"DICM" + bytes(200)
    with pytest.raises(BadImageError, match=r"a DICOM scan, .*export them as PNG or TIFF, stre"):
        decode_rgb(scan, "scan.png")


def test_bad_files_name_the_reason() -> None:
    good = _encode(Image.new("RGB", (64, 64), "blue"), "JPEG")
    cases = {
        "empty.jpg": (b"", "empty"),
        "text.jpg": (b"this is not an image\n", "not a recognised image"),
        "cut.jpg": (good[: len(good) // 2], "cannot decode"),
        # The start of an iPhone photo and no more: an ISO media ftyp box of brand heic.
        "IMG_0001.HEIC": (b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64), "truncated HEIC"),
        # A live photo's video saved as .jpg, an MP4, a WebM and an AVI: each said to be a video.
        "IMG_0001.jpg": (b"\0\0\0\x14ftypqt  \0\0\0\0qt  " + bytes(64), "a video, not an image"),
        "clip.png": (b"\0\0\0\x20ftypisom\0\0\x02\0isomiso2" + bytes(64), "-frames:v 1"),
        "clip.webp": (b"\x1a\x45\xdf\xa3" + bytes(64), "a video, not an image"),
        "clip.gif": (b"RIFF\0\0\0\0AVI LIST" + bytes(64), "a video, not an image"),
        # A Mac's AppleDouble file beside a photo, named by `find -iname '*.jpg'`.
        "._IMG_1.jpg": (b"\0\x05\x16\x07\0\x02\0\0Mac OS X        ", "a Mac's metadata file"),
    }
    # An AVIF whose primary-item box is damaged: Pillow's plugin raises RuntimeError for it.
    avif = bytearray(_encode(Image.new("RGB", (40, 40)), "AVIF"))
    avif[avif.find(b"pitm")] = 0
    cases["damaged.avif"] = (bytes(avif), "cannot decode")
    for name, (data, reason) in cases.items():
        with pytest.raises(BadImageError) as err:
            decode_rgb(data, name)
        assert err.value.name == name and reason in err.value.reason


def test_phone_and_web_formats_count_as_images_so_none_is_dropped_silently() -> None:
    for name in [
        "a.jfif",
        "b.JPE",
        "c.avif",
        "IMG_0001.HEIC",
        "d.heif",
        "C001.HIF",
        "e.pjpeg",
        "3d.MPO",
    ]:
        assert images.is_image_name(name), name
    avif = _encode(Image.new("RGB", (20, 20), "red"), "AVIF")
    assert load_array(avif, "c.avif", 8).shape == (3, 8, 8)


def test_an_avif_where_pillow_cannot_read_avif_is_a_bad_image_that_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An environment's Pillow older than 11.3, or built without libavif: that photo is
    reported (the others go on), not a KeyError that stops the run."""
    avif = _encode(Image.new("RGB", (20, 20), "red"), "AVIF")
    Image.init()
    monkeypatch.delitem(Image.OPEN, "AVIF")
    with pytest.raises(BadImageError, match=r"c\.avif: .*AVIF needs Pillow 11\.3 or later"):
        decode_rgb(avif, "c.avif")


def test_huge_image_is_refused_before_decoding() -> None:
    huge = _encode(Image.new("1", (10000, 10000)), "PNG")
    with pytest.raises(BadImageError, match="10000x10000"):
        decode_rgb(huge, "huge.png")


def test_read_image_file_takes_the_path_as_a_notebook_types_it(tmp_path: Path) -> None:
    """A str or a Path: the same (3, size, size) pixels as preprocess's load_array."""
    data = _encode(Image.new("RGBA", (48, 40), (200, 10, 30, 0)), "PNG")
    (tmp_path / "dog.png").write_bytes(data)
    expected = load_array(data, "dog.png", 32)
    for path in (str(tmp_path / "dog.png"), tmp_path / "dog.png"):
        assert np.array_equal(images.read_image_file(path, 32), expected)


def test_resize_shorter_side_then_center_crop() -> None:
    arr = np.zeros((20, 60, 3), dtype=np.uint8)
    arr[:, 20:40] = 255  # a white middle third survives the center crop
    out = resize_center_crop(Image.fromarray(arr), 10)
    assert out.size == (10, 10)
    assert np.asarray(out)[:, 2:8].min() > 200
    chw = load_array(_encode(Image.fromarray(arr), "PNG"), "a.png", 10)
    assert chw.shape == (3, 10, 10) and chw.dtype == np.uint8


def _resize_then_crop(img: Image.Image, size: int) -> Image.Image:
    """The whole image resized, then cropped: what every ordinary photo gets, byte for byte."""
    w, h = img.size
    nw, nh = max(size, round(w * size / min(w, h))), max(size, round(h * size / min(w, h)))
    left, top = (nw - size) // 2, (nh - size) // 2
    resized = img.resize((nw, nh), Image.Resampling.BILINEAR, reducing_gap=None)
    return resized.crop((left, top, left + size, top + size))


def test_a_long_strip_resizes_only_the_square_it_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 256, (3, 4000, 3), dtype=np.uint8))  # 1333:1
    photo = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8))
    made = []
    resize = Image.Image.resize

    def spy(self: Image.Image, size: tuple[int, int], *args: object, **kw: object) -> Image.Image:
        made.append(size[0] * size[1])
        return resize(self, size, *args, **kw)

    monkeypatch.setattr(Image.Image, "resize", spy)
    out = resize_center_crop(strip, 16)
    # Resizing the whole strip would make 16 x 21,333 pixels: for a 1,000,000x1 PNG, ~18 GB.
    assert made == [16 * 16]
    expected = np.asarray(_resize_then_crop(strip, 16), np.int16)
    assert np.abs(np.asarray(out, np.int16) - expected).max() <= 1
    # An ordinary photo keeps the exact bytes it has always had.
    assert resize_center_crop(photo, 64).tobytes() == _resize_then_crop(photo, 64).tobytes()


@pytest.mark.parametrize(("width", "height"), [(500, 300), (65, 200), (117, 253), (40, 164)])
def test_the_resize_runs_along_rows_first_whatever_the_shape(width: int, height: int) -> None:
    # Pillow picks the order of its two rounded passes itself (13.0: columns first for some tall
    # images): the pipeline fixes it, so that docs/web/visionpipe.mjs and other ports match it.
    rng = np.random.default_rng(width)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    size = 64 if min(width, height) > 64 else 32
    nw, nh = round(width * size / min(width, height)), round(height * size / min(width, height))
    bilinear = Image.Resampling.BILINEAR
    rows = img.resize((max(nw, size), height), bilinear, reducing_gap=None)
    both = rows.resize((max(nw, size), max(nh, size)), bilinear, reducing_gap=None)
    left, top = (both.width - size) // 2, (both.height - size) // 2
    expected = both.crop((left, top, left + size, top + size))
    assert resize_center_crop(img, size).tobytes() == expected.tobytes()


def _photo(width: int, height: int, **save: object) -> bytes:
    """A smooth photo-like JPEG: a colour gradient with a bright disc."""
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height)], -1)
    arr[(x - width // 3) ** 2 + (y - height // 2) ** 2 < (height // 5) ** 2] = 240
    return _encode(Image.fromarray(arr.astype(np.uint8)), "JPEG", quality=90, **save)


def test_big_jpegs_decode_at_reduced_scale_close_to_a_full_decode() -> None:
    data = _photo(1600, 1200)
    # 1/8 scale keeps 150 rows, at least DRAFT_GAP (2) x 64: the most libjpeg can skip.
    assert decode_rgb(data, "p.jpg", 64).size == (200, 150)
    assert decode_rgb(data, "p.jpg", 224).size == (800, 600)  # 1/2: 1/4 would leave 300 < 448
    assert decode_rgb(data, "p.jpg").size == (1600, 1200)
    draft = load_array(data, "p.jpg", 64).astype(int)
    full = np.asarray(resize_center_crop(decode_rgb(data, "p.jpg"), 64)).transpose(2, 0, 1)
    assert np.abs(draft - full.astype(int)).mean() < 2.0


def test_reduced_scale_decoding_keeps_the_exif_rotation() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    assert decode_rgb(_photo(1600, 1200, exif=exif.tobytes()), "r.jpg", 64).size == (150, 200)


def _noisy(width: int, height: int, seed: int) -> Image.Image:
    """Sharp random detail on a gradient: every IDCT and upsampling difference shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, np.full_like(x, 128)], -1)
    noise = rng.integers(-60, 60, (height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "save",
    [
        {"quality": 75},  # 4:2:0, what most cameras and the CIFAR-10 copy write
        {"quality": 95, "subsampling": 0},  # 4:4:4
        {"quality": 90, "subsampling": 1},  # 4:2:2
        {"quality": 85, "progressive": True},
        {"quality": 80, "icc_profile": b"\0" * 200},  # an ICC segment changes nothing
    ],
)
@pytest.mark.parametrize("size", [None, 32, 64, 224])
def test_plain_jpegs_decode_as_pillow_decodes_them(
    save: dict[str, object], size: int | None
) -> None:
    """The simplejpeg fast path gives Pillow's pixels byte for byte, at every reduced scale."""
    for width, height in [(32, 32), (301, 227), (1030, 770)]:
        data = _encode(_noisy(width, height, width), "JPEG", **save)
        fast = images._decode_plain_jpeg(data, size)
        assert fast is not None, (width, height, save)
        slow = images._decode_with_pillow(data, "x.jpg", size)
        assert fast.shape == (slow.height, slow.width, 3)
        assert fast.tobytes() == slow.tobytes(), (width, height, size, save)


def test_jpegs_pillow_acts_on_are_left_to_pillow() -> None:
    exif = Image.Exif()
    exif[0x0112] = 1  # even an upright EXIF: Pillow reads it
    rgb = _noisy(40, 30, 0)
    others = {
        "exif": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "grey": _encode(rgb.convert("L"), "JPEG"),
        "cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "cut": _encode(rgb, "JPEG")[:200],
        "png": _encode(rgb, "PNG"),
    }
    for what, data in others.items():
        assert images._decode_plain_jpeg(data, 32) is None, what
    assert images._decode_plain_jpeg(_encode(rgb, "JPEG"), 32) is not None


def test_header_pixels_reads_png_and_plain_jpeg_headers_only() -> None:
    img = Image.new("RGB", (40, 30))
    assert images.header_pixels(_encode(img, "PNG")) == 1200
    assert images.header_pixels(_encode(img, "JPEG")) == 1200
    assert images.header_pixels(_encode(Image.new("1", (10000, 10000)), "PNG")) == 10**8
    exif = Image.Exif()
    exif[0x0112] = 6
    assert images.header_pixels(_encode(img, "JPEG", exif=exif.tobytes())) is None
    assert images.header_pixels(_encode(img, "GIF")) is None
    assert images.header_pixels(b"\x89PNG\r\n\x1a\n") is None


def test_a_progressive_jpeg_counts_every_pixel_against_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # libjpeg holds a progressive JPEG's coefficients at full size whatever the scale: a 1.5 MB
    # file claiming 32000x32000 would take gigabytes of a server's memory for one request.
    monkeypatch.setattr(images, "MAX_PIXELS", 100_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)
    photo = Image.new("RGB", (640, 480), (30, 120, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # Pillow's path as well as the plain-JPEG one
    for extra in ({}, {"exif": exif.tobytes()}):
        baseline = _encode(photo, "JPEG", **extra)
        assert sorted(decode_rgb(baseline, "big.jpg", 16).size) == [60, 80]  # at 1/8 scale
        progressive = _encode(photo, "JPEG", progressive=True, **extra)
        with pytest.raises(BadImageError) as refused:
            decode_rgb(progressive, "big.jpg", 16)
        assert refused.value.reason == (
            "image is 640x480 (307,200 pixels), above the 100,000 limit; downscale it first"
        )


def test_a_jpeg_of_more_scans_than_encoders_write_is_refused_before_decoding() -> None:
    # Each scan decodes the whole image again: a 10 MB file of tiny scans took 30 s of a server.
    progressive = _encode(Image.new("RGB", (64, 48), (30, 120, 200)), "JPEG", progressive=True)
    scans = progressive.count(b"\xff\xda")
    assert 1 < scans <= images.MAX_JPEG_SCANS
    assert decode_rgb(progressive, "fine.jpg").size == (64, 48)
    last = progressive.rindex(b"\xff\xda")
    bomb = progressive[:last] + progressive[last:-2] * 150 + b"\xff\xd9"  # the last scan, again
    with pytest.raises(BadImageError) as refused:
        decode_rgb(bomb, "bomb.jpg", 32)
    assert refused.value.reason.startswith(
        "a JPEG of 101 scans, above the 100 limit (encoders write about 10"
    )
    # FF DA bytes outside the coded data are no scans: a phone's motion photo (a video after
    # the end of image), an EXIF block.
    exif = Image.Exif()
    exif[0x927C] = b"\xff\xda" * 200  # a maker note
    photo = _encode(Image.new("RGB", (64, 48), (30, 120, 200)), "JPEG", exif=exif.tobytes())
    motion = photo + b"\0\0\0\x18ftypmp42" + b"\xff\xda\x00\x0c" * 300
    assert motion.count(b"\xff\xda") > 500
    assert decode_rgb(motion, "motion.jpg").size == (64, 48)


def test_32_bit_pixels_convert_to_8_bits_in_blocks_of_rows() -> None:
    # A 64-megapixel float or integer TIFF is a few hundred kilobytes deflated: converted whole,
    # its float64 temporaries took 2 GB of a server's memory for one upload.
    import tracemalloc

    rng = np.random.default_rng(0)
    for arr, convert in (
        (rng.integers(-5, 2**31 - 1, (2000, 3000), dtype=np.int32), images._int32_to_8bit),
        (rng.random((2000, 3000), dtype=np.float32) * 300, images._float_to_8bit),
    ):
        tracemalloc.start()
        try:
            out = convert(arr)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert out.shape == arr.shape and out.dtype == np.uint8
        # The output, and a few float64 blocks of BLOCK_PIXELS: not a float64 copy of it all.
        assert peak < out.nbytes + 4 * 8 * images.BLOCK_PIXELS, (convert.__name__, peak)


def test_a_jpeg_above_the_pixel_limit_is_read_at_the_reduced_scale_it_decodes_at(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A 108- or 200-megapixel phone photo, scaled down: the limits shrink with it.
    monkeypatch.setattr(images, "MAX_PIXELS", 100_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60_000)  # Pillow's bomb error above 120,000
    photo = Image.new("RGB", (640, 480), (30, 120, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated, as phones save: Pillow's path, not the plain-JPEG one
    for data in (_encode(photo, "JPEG"), _encode(photo, "JPEG", exif=exif.tobytes())):
        out = decode_rgb(data, "big.jpg", 16)  # decoded at 1/8 scale: 80x60
        assert sorted(out.size) == [60, 80]
        assert np.abs(np.asarray(out, np.int16) - (30, 120, 200)).max() <= 2
        assert load_array(data, "big.jpg", 16).shape == (3, 16, 16)
        with pytest.raises(BadImageError, match="above the 100,000 limit; downscale it first"):
            decode_rgb(data, "big.jpg", None)  # a full decode stays refused
    # No reduced decode for a PNG: refused in the same words, not Pillow's bomb warning.
    with pytest.raises(BadImageError) as refused:
        decode_rgb(_encode(photo, "PNG"), "big.png", 16)
    assert refused.value.reason == (
        "image is 640x480 (307,200 pixels), above the 100,000 limit; downscale it first"
    )
    with pytest.raises(BadImageError) as refused:  # WebP's plugin checks the size itself
        decode_rgb(_encode(photo, "WEBP"), "big.webp", 16)
    assert (
        refused.value.reason
        == "image (307,200 pixels) is above the 100,000 limit; downscale it first"
    )
    with pytest.raises(BadImageError, match="above the 100,000 limit"):
        decode_rgb(_encode(Image.new("RGB", (400, 300)), "PNG"), "big.png", 16)


def test_postscript_named_like_a_photo_never_reaches_ghostscript(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow's EPS plugin hands a file's bytes to `gs`; an upload named photo.jpg could be one.
    marker = tmp_path / "gs-ran"
    fake = tmp_path / "bin" / "gs"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\n"
    with pytest.raises(BadImageError) as err:
        decode_rgb(eps, "photo.jpg")
    assert err.value.reason.startswith("its bytes are EPS, a format not read here"), err.value
    assert not marker.exists()


def _float64_tiff() -> bytes:
    """A 1x1 TIFF of one 64-bit float sample, as numpy's default dtype exports it."""
    import struct

    entries = [(256, 3, 1), (257, 3, 1), (258, 3, 64), (259, 3, 1), (262, 3, 1)]
    entries += [(273, 4, 0), (277, 3, 1), (278, 3, 1), (279, 4, 8), (339, 3, 3)]
    data_at = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_at if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + struct.pack("<d", 0.5)


def test_a_tiff_of_samples_pillow_has_no_mode_for_says_so() -> None:
    with pytest.raises(BadImageError) as err:
        decode_rgb(_float64_tiff(), "export.tif")
    assert err.value.reason.startswith("a TIFF of floating-point samples Pillow cannot read")
    # A truncated upload is no such TIFF; nor is a TGA (no magic bytes) a CUR.
    for data in (_float64_tiff()[:8], b"II*\0\xff\xff\xff\0"):
        # Pillow's "Corrupt EXIF data" names no file: it is kept off the user's terminal.
        with pytest.raises(BadImageError) as err, warnings.catch_warnings():
            warnings.simplefilter("error")
            decode_rgb(data, "cut.tif")
        assert err.value.reason.startswith("a damaged or truncated TIFF"), err.value
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    with pytest.raises(BadImageError, match="a damaged or truncated PNG image"):
        decode_rgb(png.getvalue()[:12], "cut.png")  # cut inside its header
    tga = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tga, "TGA")
    with pytest.raises(BadImageError, match="not a recognised image format"):
        decode_rgb(tga.getvalue(), "a.tga")


def test_a_fault_of_this_code_after_the_decode_is_no_bad_image(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The decoders' own failures are a file's fault; one of the conversion here is a bug, which
    # must stop with its traceback, not skip every photo as undecodable.
    def broken(img: Image.Image) -> Image.Image:
        raise TypeError("a bug")

    monkeypatch.setattr(images, "_to_rgb", broken)
    data = io.BytesIO()
    Image.new("RGB", (8, 8)).save(data, "PNG")
    with pytest.raises(TypeError, match="a bug"):
        decode_rgb(data.getvalue(), "x.png")


def test_a_photo_whose_exif_rotation_cannot_be_read_is_a_bad_image_not_a_crash() -> None:
    # A byte of a JPEG's EXIF changed: Pillow decodes the pixels, then its EXIF parser fails
    # with struct.error while turning the photo upright.
    exif = Image.Exif()
    exif[0x0112], exif[0x011A] = 6, (72, 1)
    data = io.BytesIO()
    with warnings.catch_warnings():  # Pillow's word on the two-number XResolution written here
        warnings.simplefilter("ignore")
        Image.new("RGB", (48, 40), "red").save(data, "JPEG", exif=exif.tobytes())
    damaged = bytearray(data.getvalue())
    damaged[damaged.find(b"Exif\0\0") + 29] = 0
    with pytest.raises(BadImageError) as err, warnings.catch_warnings():
        warnings.simplefilter("error")  # nor do Pillow's warnings, which name no file, show
        decode_rgb(bytes(damaged), "IMG_0001.jpg")
    assert err.value.reason.startswith("cannot read its EXIF rotation: error: "), err.value


def test_a_png_whose_text_unpacks_past_pillow_s_limit_still_gives_its_pixels() -> None:
    # Photoshop's XMP edit history can unpack to megabytes: Pillow refuses the text (a bomb
    # guard), while the pixels are fine and the text unused.
    from PIL import PngImagePlugin

    rng = np.random.default_rng(0)
    pixels = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "x" * (2 * PngImagePlugin.MAX_TEXT_CHUNK), zip=True)
    with_text, plain = io.BytesIO(), io.BytesIO()
    pixels.save(with_text, "PNG", pnginfo=info)
    pixels.save(plain, "PNG")
    with pytest.raises(ValueError, match="MAX_TEXT_CHUNK"):
        Image.open(io.BytesIO(with_text.getvalue())).load()
    got = load_array(with_text.getvalue(), "xmp.png", 8)
    assert np.array_equal(got, load_array(plain.getvalue(), "plain.png", 8))
    # A damaged one is still named as such.
    with pytest.raises(BadImageError):
        decode_rgb(with_text.getvalue()[:200], "cut.png")


def test_decoding_in_a_thread_leaves_the_process_s_warning_filters_alone() -> None:
    # Before Python 3.14, catch_warnings swaps the process's filters: two threads' overlapping
    # ones leave Pillow's warnings ignored for good (a library caller's, serve's decode pool).
    import threading

    from visionpipe import images

    inside: list[list[object]] = []

    def decode() -> None:
        with images._no_bomb_warning():
            inside.append(list(warnings.filters))

    before = list(warnings.filters)
    thread = threading.Thread(target=decode)
    thread.start()
    thread.join()
    assert inside == [before] and warnings.filters == before
    with images._no_bomb_warning():  # the main thread's own decodes are quiet
        assert warnings.filters != before
    assert warnings.filters == before


def test_a_png_whose_colour_profile_or_many_texts_pass_pillow_s_limits_gives_its_pixels() -> None:
    # A printer's ICC profile can unpack past 1 MB; many text chunks past 64 MB in all.
    from PIL import PngImagePlugin

    pixels = Image.new("RGB", (10, 12), (200, 30, 90))
    plain = io.BytesIO()
    pixels.save(plain, "PNG")
    profiled = io.BytesIO()
    pixels.save(profiled, "PNG", icc_profile=bytes(2 * PngImagePlugin.MAX_TEXT_CHUNK))
    many = PngImagePlugin.PngInfo()
    for i in range(PngImagePlugin.MAX_TEXT_MEMORY // PngImagePlugin.MAX_TEXT_CHUNK + 1):
        many.add_itxt(f"k{i}", "x" * (PngImagePlugin.MAX_TEXT_CHUNK - 16), zip=True)
    texts = io.BytesIO()
    pixels.save(texts, "PNG", pnginfo=many)
    want = load_array(plain.getvalue(), "plain.png", 8)
    for data in (profiled.getvalue(), texts.getvalue()):
        with pytest.raises(ValueError, match="MAX_TEXT"):
            Image.open(io.BytesIO(data)).load()
        assert np.array_equal(load_array(data, "big.png", 8), want)
