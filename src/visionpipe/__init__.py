"""visionpipe: a reproducible image-classification pipeline driven by DVC."""

__version__ = "0.1.0"
