"""Captioned image grids: images in square cells on a white sheet, caption lines under each.

Drawn for people to look at (the prediction contact sheet, the misclassified validation images),
so tiny images are upscaled with NEAREST to keep their pixels visible. Free of torch: the ONNX
predict path draws one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

Line = tuple[str, str]  # (text, colour) of one caption line


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
    font = ImageFont.load_default(size=layout.font_size)
    if not captions and empty:
        draw.text((8, 8), empty, fill="black", font=font)
    for n, (img, lines) in enumerate(zip(images, captions, strict=True)):
        x, y = (n % layout.cols) * layout.cell, (n // layout.cols) * layout.row_height
        img = fit(img, layout.cell)
        sheet.paste(img, (x + (layout.cell - img.width) // 2, y + (layout.cell - img.height) // 2))
        assert len(lines) <= layout.lines, lines  # more would run into the next row
        for k, (text, colour) in enumerate(lines):
            xy = (x + 4, y + layout.cell + 2 + k * layout.line_height)
            draw.text(xy, text[: layout.max_chars], fill=colour, font=font)
    return sheet
