"""The HEIC photos under tests/data/heic/, and how they were made.

pi-heif, the project's HEIF decoder, cannot encode, so the files are committed. This module
makes them again with pillow-heif's encoder (x265):

    uv run --no-project --with pillow-heif --with numpy python tests/heic_fixtures.py

Each photo is 32x24 pixels of four flat 16x12 blocks, so a lossy HEVC round trip keeps each
block's mean colour within a few levels: the tests compare those means.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HEIC_DIR = Path(__file__).resolve().parent / "data" / "heic"
Colors = tuple[tuple[int, int, int], ...]
# Class photos: ants are reddish, bees yellow; the blocks run left to right, top row first.
PHOTOS: dict[str, Colors] = {
    "ants_1": ((200, 40, 30), (160, 60, 20), (220, 90, 50), (120, 30, 30)),
    "ants_2": ((180, 20, 60), (210, 70, 40), (140, 40, 20), (230, 110, 80)),
    "ants_3": ((150, 50, 50), (200, 100, 60), (170, 30, 10), (240, 60, 40)),
    "bees_1": ((240, 200, 20), (200, 180, 40), (250, 220, 90), (180, 160, 10)),
    "bees_2": ((230, 210, 60), (250, 190, 30), (190, 170, 20), (220, 230, 100)),
    "bees_3": ((210, 190, 50), (240, 240, 80), (200, 160, 30), (250, 200, 60)),
}
# An upright portrait picture, red above blue, as a phone camera shows it. Its file stores it
# turned on its side (32x24), the way iPhone sensors do, with the turn to display it recorded
# twice: as HEIF's 'irot' box, which libheif applies, and as EXIF orientation 6.
UPRIGHT: Colors = ((220, 30, 30), (220, 30, 30), (30, 30, 220), (30, 30, 220))
# A 10-bit greyscale picture (HDR cameras, scanners) of a dark left half and a light right half,
# written from 16-bit values; 8 bits read the halves as 64 and 192.
DEEP_HALVES = (64 * 257, 192 * 257)
# A burst: two pictures in one file, the second of them the primary (the one a phone shows).
BURST: tuple[Colors, Colors] = (
    ((30, 200, 30),) * 4,
    ((200, 30, 200),) * 4,
)


def blocks(colors: Colors, width: int = 32, height: int = 24) -> np.ndarray:
    """(height, width, 3) uint8 of four flat blocks: top left, top right, bottom left, right."""
    arr = np.empty((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    for i, color in enumerate(colors):
        arr[(i // 2) * h : (i // 2 + 1) * h, (i % 2) * w : (i % 2 + 1) * w] = color
    return arr


def block_means(arr: np.ndarray) -> np.ndarray:
    """The mean colour of each of the four blocks of an (H, W, 3) picture, (4, 3) float."""
    h, w = arr.shape[0] // 2, arr.shape[1] // 2
    quads = [arr[r * h : (r + 1) * h, c * w : (c + 1) * w] for r in (0, 1) for c in (0, 1)]
    return np.array([q.reshape(-1, 3).mean(axis=0) for q in quads])


def main() -> None:
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    HEIC_DIR.mkdir(parents=True, exist_ok=True)
    quality = {"quality": 90}  # 4:2:0 chroma, as an iPhone saves: block edges fall on even pixels
    for name, colors in PHOTOS.items():
        Image.fromarray(blocks(colors)).save(HEIC_DIR / f"{name}.heic", **quality)
    # Stored on its side: turning it 90 degrees clockwise (EXIF orientation 6) shows it upright.
    side = Image.fromarray(blocks(UPRIGHT, 24, 32)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    side.save(HEIC_DIR / "rotated.heic", exif=exif.tobytes(), **quality)
    first, primary = (Image.fromarray(blocks(colors)) for colors in BURST)
    first.save(HEIC_DIR / "burst.heic", save_all=True, append_images=[primary], primary_index=1)
    rgba = np.dstack([blocks(PHOTOS["bees_1"]), np.full((24, 32), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(HEIC_DIR / "alpha.heic", **quality)
    deep = np.repeat(np.array(DEEP_HALVES, np.uint16), 16)[None].repeat(24, axis=0)
    pillow_heif.from_bytes("I;16", (32, 24), deep.tobytes()).save(HEIC_DIR / "deep.heic", **quality)
    print(pillow_heif.libheif_info())


if __name__ == "__main__":
    main()
