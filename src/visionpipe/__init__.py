"""visionpipe: a reproducible image-classification pipeline driven by DVC."""

from visionpipe._version import __version__

__all__ = ["__version__"]
