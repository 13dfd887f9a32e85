"""Captioned image grids: images in square cells on a white sheet, caption lines under each.

Drawn for people to look at (the prediction contact sheet, the misclassified validation images),
so tiny images are upscaled with NEAREST to keep their pixels visible. Free of torch: the ONNX
predict path draws one.
"""

from __future__ import annotations

import functools
import logging
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

log = logging.getLogger(__name__)

# (text, colour) of one caption line, or (text, colour, end): `end` (a probability) is drawn
# whole, after the text cut to fit.
Line = tuple[str, str] | tuple[str, str, str]

# Pillow's own font draws ASCII only. For other characters (café, кошка, 猫), fonts the
# system may have, by file name, which ImageFont.truetype looks up in the system's font
# folders: Latin, Greek and Cyrillic ones first (Linux, macOS, Windows), then CJK ones.
FALLBACK_FONTS = (
    "DejaVuSans.ttf",
    "Arial.ttf",
    "arial.ttf",
    "NotoSansCJK-Regular.ttc",
    "NotoSansCJKsc-Regular.otf",
    "wqy-microhei.ttc",
    "wqy-zenhei.ttc",
    "DroidSansFallbackFull.ttf",
    "Hiragino Sans GB.ttc",
    "Arial Unicode.ttf",
    "msyh.ttc",
    "YuGothM.ttc",
    "malgun.ttf",
    "seguisym.ttf",
    # Scripts beyond those: Noto's per-script fonts (Debian's fonts-noto-core), and emoji in
    # black and white (a colour emoji font draws at one size only, which no caption has).
    "NotoSansDevanagari-Regular.ttf",
    "NotoSansThai-Regular.ttf",
    "NotoSansArabic-Regular.ttf",
    "NotoSansHebrew-Regular.ttf",
    "Symbola.ttf",
    "NotoEmoji-Regular.ttf",
)
_NOT_A_CHARACTER = "\U0010fffd"  # private use: no font draws it, so it shows the missing glyph


@dataclass(frozen=True)
class Layout:
    cell: int  # px: each image is fitted into a cell x cell square
    cols: int  # cells per row
    lines: int  # caption lines under each cell
    font_size: int  # px
    max_chars: int = 18  # a caption line is cut to this many characters, about a cell's width

    @property
    def line_height(self) -> int:
        return self.font_size + 2

    @property
    def row_height(self) -> int:
        return self.cell + self.lines * self.line_height + 4


def fit(img: Image.Image, cell: int) -> Image.Image:
    """`img` scaled so its longer side is `cell` px."""
    scale = cell / max(img.size)
    # Upscale tiny images with NEAREST so their pixels stay honest; downscale smoothly.
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BILINEAR
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    return img.resize(size, resample)


def captioned_grid(
    images: Iterable[Image.Image],
    captions: Sequence[Sequence[Line]],
    layout: Layout,
    empty: str = "",
) -> Image.Image:
    """One cell per caption list, `layout.cols` to a row, each image centred in its cell.

    `images` is read one at a time, so a generator keeps a single full-size image in memory.
    With no cells the sheet is one empty row that says `empty`.
    """
    rows = max(1, -(-len(captions) // layout.cols))
    sheet = Image.new("RGB", (layout.cols * layout.cell, rows * layout.row_height), "white")
    draw = ImageDraw.Draw(sheet)
    fonts = Fonts.of_size(layout.font_size)
    if not captions and empty:
        fonts.draw(draw, (8, 8), empty, "black")
    for n, (img, lines) in enumerate(zip(images, captions, strict=True)):
        x, y = (n % layout.cols) * layout.cell, (n // layout.cols) * layout.row_height
        img = fit(img, layout.cell)
        sheet.paste(img, (x + (layout.cell - img.width) // 2, y + (layout.cell - img.height) // 2))
        assert len(lines) <= layout.lines, lines  # more would run into the next row
        for k, (text, colour, *end) in enumerate(lines):
            xy = (x + 4, y + layout.cell + 2 + k * layout.line_height)
            shown = fonts.fit(printable(text), layout.cell - 6, layout.max_chars, "".join(end))
            fonts.draw(draw, xy, shown, colour)
    fonts.warn_missing()
    return sheet


def printable(text: str) -> str:
    """`text` for one caption line: a control character (a file name's newline) as `?`, as
    `ls` shows it, and the bytes of a name that is not UTF-8 as U+FFFD, as a terminal does."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join("?" if unicodedata.category(ch) == "Cc" else ch for ch in text)


class Fonts:
    """Pillow's font, and for each character it lacks the first of `FALLBACK_FONTS` found on
    this system that has it; a character none has is drawn as the missing-glyph box, and
    `warn_missing` says which and what to install."""

    def __init__(self, size: int) -> None:
        self.chain = _font_chain(size)
        self.missing: set[str] = set()
        self.warned: set[str] = set()

    @staticmethod
    @functools.cache
    def of_size(size: int) -> Fonts:
        """One per size and process, so a grid drawn every epoch warns of a character once."""
        return Fonts(size)

    def font_for(self, ch: str) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
        for font in self.chain:
            if _has_glyph(font, ch):
                return font
        if not ch.isspace():
            self.missing.add(ch)
        return self.chain[0]

    def runs(self, text: str) -> list[tuple[str, ImageFont.FreeTypeFont | ImageFont.ImageFont]]:
        """`text` in pieces, each with the font that draws it."""
        runs: list[tuple[str, ImageFont.FreeTypeFont | ImageFont.ImageFont]] = []
        for ch in text:
            font = self.font_for(ch)
            if runs and runs[-1][1] is font:
                runs[-1] = (runs[-1][0] + ch, font)
            else:
                runs.append((ch, font))
        return runs

    def width(self, text: str) -> float:
        return sum(font.getlength(run) for run, font in self.runs(text))

    def fit(self, text: str, width: int, max_chars: int, end: str = "") -> str:
        """`text` + `end` in at most `max_chars` characters and `width` px: the end of `text`
        dropped (wide CJK characters fill a cell long before the character limit does) and
        marked with "…", so that a cut name does not pass for a whole one; `end` kept whole."""
        # Composed: a Mac's decomposed "e" + U+0301 would draw its accent in a run of its own.
        text = unicodedata.normalize("NFC", text)
        limit = max(0, max_chars - len(end))
        cut = len(text) > limit
        kept = text[: limit - 1] if cut else text  # the "…" counts as a character
        while kept and self.width(kept + "…" * cut + end) > width:
            kept, cut = kept[:-1], True
        if cut and not kept:  # no room for a letter and the mark: the letters, as many as fit
            kept = text[:limit]
            while kept and self.width(kept + end) > width:
                kept = kept[:-1]
            return kept + end
        return kept + "…" * cut + end

    def draw(self, draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, fill: str) -> None:
        x, y = xy
        if not isinstance(self.chain[0], ImageFont.FreeTypeFont):  # Pillow without FreeType
            draw.text(xy, text, fill=fill, font=self.chain[0])
            return
        baseline = y + self.chain[0].getmetrics()[0]  # every font's text on the first's line
        for run, font in self.runs(text):
            draw.text((x, baseline), run, fill=fill, font=font, anchor="ls")
            x += font.getlength(run)

    def warn_missing(self) -> None:
        new = self.missing - self.warned
        self.warned |= new
        if new:
            log.warning(
                "no font on this system draws %s, shown as boxes in the image's captions:"
                " install one that does (Noto CJK for Chinese, Japanese and Korean: the"
                " fonts-noto-cjk package on Debian and Ubuntu, google-noto-sans-cjk-fonts on"
                " Fedora; fonts-noto-core for Thai, Devanagari, Arabic and Hebrew; fonts-symbola"
                " for emoji, drawn in black, one symbol at a time)",
                " ".join(sorted(new)),
            )


@functools.cache
def _font_chain(size: int) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, ...]:
    chain: list[ImageFont.FreeTypeFont | ImageFont.ImageFont] = [ImageFont.load_default(size)]
    for name in FALLBACK_FONTS:
        try:
            chain.append(ImageFont.truetype(name, size))
        except OSError:  # not on this system
            continue
    return tuple(chain)


@functools.cache
def _has_glyph(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, ch: str) -> bool:
    """Whether `font` draws `ch` as itself, not as its missing-glyph box."""
    return _mask(font, ch) != _mask(font, _NOT_A_CHARACTER)


def _mask(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, text: str) -> tuple:
    mask = font.getmask(text)
    return mask.size, bytes(mask)
