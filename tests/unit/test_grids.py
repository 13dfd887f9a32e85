"""Captioned image grids: layout, honest upscaling, smooth fitting, captions kept to their cell."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from visionpipe.grids import Fonts, Layout, captioned_grid, printable

LAYOUT = Layout(cell=16, cols=3, lines=2, font_size=11)


def _pixels(sheet: Image.Image) -> np.ndarray:
    return np.asarray(sheet)


def test_cells_fill_rows_of_cols_each_with_room_for_the_captions() -> None:
    for n, rows in [(1, 1), (3, 1), (4, 2), (7, 3)]:
        images = [Image.new("RGB", (5, 5), "red")] * n
        sheet = captioned_grid(images, [[("x", "black")]] * n, LAYOUT)
        assert sheet.size == (3 * 16, rows * LAYOUT.row_height), n
        assert LAYOUT.row_height >= 16 + 2 * LAYOUT.font_size


def test_a_tiny_image_is_upscaled_pixel_for_pixel() -> None:
    tiny = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [9, 9, 9]]], np.uint8)
    sheet = captioned_grid([Image.fromarray(tiny)], [[]], LAYOUT)
    cell = _pixels(sheet)[:16, :16]
    assert np.array_equal(cell, tiny.repeat(8, axis=0).repeat(8, axis=1))


def test_a_large_image_is_fitted_smoothly_and_centred() -> None:
    stripes = np.zeros((40, 80, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: a smooth downscale greys them, NEAREST would not
    sheet = _pixels(captioned_grid([Image.fromarray(stripes)], [[]], LAYOUT))
    assert (sheet[:4, :16] == 255).all() and (sheet[12:16, :16] == 255).all()  # white margins
    inside = sheet[4:12, :16]
    assert 100 < inside.mean() < 155 and inside.std() < 40


def test_a_caption_line_is_cut_to_max_chars_and_says_so() -> None:
    wide = Layout(cell=64, cols=1, lines=1, font_size=11, max_chars=4)  # 4 Ws fit in 64 px
    image = [Image.new("RGB", (4, 4), "blue")]

    def drawn(text: str) -> bytes:
        return captioned_grid(image, [[(text, "black")]], wide).tobytes()

    assert drawn("W" * 40) == drawn("WWW…"), "a cut name ends in an ellipsis"
    assert drawn("WWWW") not in (drawn("WWW…"), drawn("WWW")), "a name that fits is whole"


def test_a_long_class_name_keeps_its_probability_and_a_mark_where_it_was_cut() -> None:
    fonts = Fonts.of_size(13)
    shown = fonts.fit("Another extremely long descriptive class name", 122, 18, " 85%")
    assert shown.endswith("… 85%") and shown.startswith("Another ") and len(shown) <= 18
    assert fonts.width(shown) <= 122
    assert fonts.fit("dog", 122, 18, " 85%") == "dog 85%"
    # A Mac's decomposed accent is drawn composed, not as a lone combining mark.
    assert fonts.fit("cafe\u0301", 122, 18) == "caf\u00e9"


def _count(band: np.ndarray, channel: int) -> int:
    """Pixels in `band` where `channel` is strong and the other two weak."""
    others = [c for c in range(3) if c != channel]
    return int(((band[..., channel] > 150) & (band[..., others] < 100).all(axis=-1)).sum())


def test_each_line_is_drawn_below_the_last_in_its_colour() -> None:
    lines = [("ab", "red"), ("ab", "blue")]
    sheet = _pixels(captioned_grid([Image.new("RGB", (4, 4), "white")], [lines], LAYOUT))
    split = 16 + 2 + LAYOUT.line_height
    first, second = sheet[16:split], sheet[split:]
    assert _count(first, 0) > 0 and _count(first, 2) == 0
    assert _count(second, 2) > 0 and _count(second, 0) == 0


def test_an_empty_grid_is_one_row_that_says_why() -> None:
    blank = captioned_grid([], [], LAYOUT)
    said = captioned_grid([], [], LAYOUT, empty="nothing here")
    assert blank.size == said.size == (3 * 16, LAYOUT.row_height)
    assert (_pixels(blank) == 255).all() and not (_pixels(said) == 255).all()


def test_a_caption_shows_control_characters_and_undecodable_bytes_as_a_terminal_does() -> None:
    assert printable("new\nline.jpg") == "new?line.jpg"
    assert printable(os.fsdecode("狗.jpg".encode("gbk"))) == "\ufffd\ufffd.jpg"
    assert printable("猫 🐱 café") == "猫 🐱 café"


def _caption(text: str, layout: Layout = LAYOUT) -> np.ndarray:
    """The caption band of a one-cell sheet captioned `text`."""
    sheet = captioned_grid([Image.new("RGB", (4, 4), "white")], [[(text, "black")]], layout)
    return _pixels(sheet)[layout.cell :]


@pytest.mark.skipif(len(Fonts.of_size(11).chain) == 1, reason="no system font besides Pillow's own")
def test_characters_pillows_font_lacks_are_drawn_from_a_system_font() -> None:
    fonts = Fonts.of_size(11)
    cyrillic = "кот"  # every fallback font of FALLBACK_FONTS draws Cyrillic but Pillow's own
    assert fonts.font_for("к") is not fonts.chain[0]
    # Pillow's own font would draw the three as the boxes it draws for any missing character.
    assert not np.array_equal(_caption(cyrillic)[:, 4:40], _caption("\ue000" * 3)[:, 4:40])


def test_a_character_no_font_draws_is_named_with_what_to_install(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        _caption("a\ue001b")  # private use: no font has it
        _caption("\ue001")  # the misclassified grid, drawn again each epoch
    assert "no font on this system draws \ue001" in caplog.text and "Noto CJK" in caplog.text
    assert caplog.text.count("no font on this system") == 1


def test_wide_characters_are_cut_to_the_cell_not_to_a_character_count() -> None:
    two = Layout(cell=48, cols=2, lines=1, font_size=11)  # 18 characters, the default limit
    band = _caption("猫" * 18, two)
    assert (band[:, 48:] == 255).all(), "the caption ran into the next cell"
    assert (band[:, :48] < 255).any()
