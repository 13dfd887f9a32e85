"""The package's version, the one place to change it (pyproject.toml reads it from here).

Apart from `__init__.py` because every stage loads that file and DVC re-runs a stage when a file
it depends on changes: a version bump alone changes no stage's work, so no stage depends on this
file, and a model keeps the version of the code that trained it.
"""

__version__ = "0.1.0"
