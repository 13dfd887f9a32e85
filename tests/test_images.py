import io

import numpy as np
import pytest
from PIL import Image

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


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_rgb(_encode(img, "JPEG", exif=exif.tobytes()), "rot.jpg")
    assert out.size == (20, 40)


def test_bad_files_name_the_reason() -> None:
    good = _encode(Image.new("RGB", (64, 64), "blue"), "JPEG")
    cases = {
        "empty.jpg": (b"", "empty"),
        "text.jpg": (b"this is not an image\n", "not a recognised image"),
        "cut.jpg": (good[: len(good) // 2], "cannot decode"),
    }
    for name, (data, reason) in cases.items():
        with pytest.raises(BadImageError) as err:
            decode_rgb(data, name)
        assert err.value.name == name and reason in err.value.reason


def test_huge_image_is_refused_before_decoding() -> None:
    huge = _encode(Image.new("1", (10000, 10000)), "PNG")
    with pytest.raises(BadImageError, match="10000x10000"):
        decode_rgb(huge, "huge.png")


def test_resize_shorter_side_then_center_crop() -> None:
    arr = np.zeros((20, 60, 3), dtype=np.uint8)
    arr[:, 20:40] = 255  # a white middle third survives the center crop
    out = resize_center_crop(Image.fromarray(arr), 10)
    assert out.size == (10, 10)
    assert np.asarray(out)[:, 2:8].min() > 200
    chw = load_array(_encode(Image.fromarray(arr), "PNG"), "a.png", 10)
    assert chw.shape == (3, 10, 10) and chw.dtype == np.uint8
