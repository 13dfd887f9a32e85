"""uv.lock against pyproject's `requires-python`: `uv sync --locked` must find a build of every
locked package on every Python the project says it runs on, or a user whose only Python is the
newest one allowed gets a failed install instead of uv fetching an older Python."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
WHEEL_TAGS = re.compile(r"-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<platform>[^-]+)\.whl$")


def _runs_on(wheel: str, minor: int) -> bool:
    """Whether wheel file `wheel` installs on CPython 3.`minor` on Linux x86-64."""
    tags = WHEEL_TAGS.search(wheel)
    assert tags, wheel
    platform_ok = tags["platform"] == "any" or (
        "linux" in tags["platform"] and "x86_64" in tags["platform"]
    )
    if not platform_ok or "musllinux" in tags["platform"]:
        return False
    pythons = tags["py"].split(".")
    if tags["abi"] == "abi3":  # the stable ABI: this CPython and every later one
        return any(p.startswith("cp3") and int(p[3:]) <= minor for p in pythons)
    return any(p in ("py3", f"cp3{minor}", f"py3{minor}") for p in pythons) and tags["abi"] in (
        "none",
        f"cp3{minor}",
    )


def test_every_locked_package_has_a_build_for_every_python_allowed() -> None:
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    allowed = SpecifierSet(pyproject["project"]["requires-python"])
    assert SpecifierSet(lock["requires-python"]) == allowed, "run `uv lock`"
    minors = [m for m in range(11, 30) if allowed.contains(f"3.{m}.0")]
    assert minors[0] == 11 and minors[-1] < 29, f"requires-python {allowed} has no upper bound"
    wheels: dict[str, list[str]] = {}
    for package in lock["package"]:
        if "sdist" in package or "wheels" not in package:
            continue  # the project itself, or a source build pip and uv can make
        names = [w["url"].rsplit("/", 1)[-1] for w in package["wheels"]]
        wheels.setdefault(package["name"], []).extend(names)
    missing = {
        f"{name} on 3.{minor}"
        for name, names in wheels.items()
        # A package with no Linux x86-64 build at all is for other systems (pywin32).
        if any(_runs_on(w, m) for w in names for m in range(11, 30))
        for minor in minors
        if not any(_runs_on(w, minor) for w in names)
    }
    assert not missing, (
        f"uv.lock has no wheel for {sorted(missing)}: lower requires-python's upper bound in "
        "pyproject.toml (or lock versions that have one) and run `uv lock`"
    )
