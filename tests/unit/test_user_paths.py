"""Paths as users write them in params: `~`, `$HOME`, and Windows paths on another system."""

from __future__ import annotations

import shlex
import zipfile
from pathlib import Path

import pytest
import yaml

from visionpipe import paths
from visionpipe.cli import main
from visionpipe.config.launch import LaunchConfig
from visionpipe.config.params import load_params
from visionpipe.config.predict import PredictConfig
from visionpipe.sources import fetch_dataset


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home 家"
    (home / "photos 📷").mkdir(parents=True)
    with zipfile.ZipFile(home / "photos 📷" / "cats.zip", "w") as zf:  # the download stage opens it
        zf.writestr("cats/1.jpg", b"jpeg")
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.mark.parametrize("written", ["~/photos 📷/cats.zip", "$HOME/photos 📷/cats.zip"])
def test_data_source_expands_home_as_the_shell_does(
    home: Path, tmp_path: Path, written: str
) -> None:
    project = tmp_path / "project"
    result = fetch_dataset(
        "imagefolder", written, None, project / "data/raw", base_dir=project, mirror=None
    )
    assert result.path == project / "data/raw/cats.zip"
    assert result.origin == str(home / "photos 📷" / "cats.zip")


@pytest.mark.parametrize("written", ["~/photos 📷", "${HOME}/photos 📷"])
def test_data_root_and_predict_inputs_expand_home(home: Path, written: str) -> None:
    assert LaunchConfig(data_root=written).data_root == home / "photos 📷"
    assert PredictConfig(inputs=[f"{written}/*.jpg"]).inputs == [f"{home}/photos 📷/*.jpg"]


@pytest.mark.parametrize(
    ("written", "said"),
    [
        ("../datasets", "is a relative path: "),
        ("$VISIONPIPE_UNSET_X/data", "(its $variable is unset here): "),
    ],
)
def test_a_relative_data_root_is_refused(written: str, said: str) -> None:
    # It works in the workspace, then names a folder inside .dvc/tmp/exps/<name> in a queued run.
    with pytest.raises(ValueError, match=r"launch.data_root .* give an absolute one") as info:
        LaunchConfig(data_root=written)
    assert said in str(info.value)
    assert LaunchConfig(data_root="").data_root is None  # `${oc.env:DATA_HOME,}`, unset


@pytest.mark.parametrize(
    ("written", "hint"),
    [
        (r"C:\Users\me\photos", "under WSL, that folder is /mnt/c/Users/me/photos"),
        ("D:/data/cats.zip", "under WSL, that folder is /mnt/d/data/cats.zip"),
        (r"\\nas\share\photos", "give its path on this machine"),
        # Hydra's unquoted reading of \\nas\share keeps one '\'; a relative one; a variable.
        (r"\nas\share\photos", "give its path on this machine, with '/'"),
        (r"data\raw", "give its path on this machine, with '/'"),
        (r"%USERPROFILE%\Pictures", "with '/' and $NAME for Windows' %NAME%"),
    ],
)
def test_a_windows_path_is_named_as_one(tmp_path: Path, written: str, hint: str) -> None:
    with pytest.raises(paths.ForeignPathError, match="is a Windows path") as info:
        fetch_dataset("imagefolder", written, None, tmp_path, base_dir=tmp_path, mirror=None)
    assert f"data.source '{written}'" in str(info.value) and hint in str(info.value)
    with pytest.raises(ValueError, match=r"launch.data_root .* is a Windows path"):
        LaunchConfig(data_root=written)


def test_plain_relative_and_unset_variable_paths_stay_as_written() -> None:
    assert paths.user_path("photos/cats", "data.source") == Path("photos/cats")
    assert paths.user_path("$VISIONPIPE_UNSET_X/a", "data.source") == Path("$VISIONPIPE_UNSET_X/a")


@pytest.mark.usefixtures("conf_copy")
def test_visionpipe_params_says_how_to_quote_a_path_hydra_cannot_read_bare(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["params", "data.source=/home/me/照片"]) == 2
    assert "goes in single quotes" in capsys.readouterr().err
    assert main(["params", "data.source='/home/me/照片 📷'"]) == 0
    assert yaml.safe_load(Path("params.yaml").read_text())["data"]["source"] == "/home/me/照片 📷"
    # An apostrophe inside the single quotes the hint gives ends them: the hint says the other way.
    assert main(["params", "data.source='/home/me/John's photos'"]) == 2
    hint = capsys.readouterr().err.splitlines()[-1]
    assert hint.endswith("""'data.source="/home/me/John'"'"'s photos"'""")
    (argv,) = [shlex.split(hint.rsplit(": ", 1)[1])]  # the shell's reading of the hint's example
    assert main(["params", *argv]) == 0
    assert yaml.safe_load(Path("params.yaml").read_text())["data"]["source"] == (
        "/home/me/John's photos"
    )


@pytest.mark.usefixtures("conf_copy")
def test_a_folder_named_by_a_number_is_a_data_source() -> None:
    # Hydra and YAML read `data.source=2024` as an int; the user means the folder 2024.
    assert main(["params", "data.source=2024"]) == 0
    assert load_params("params.yaml").data.source == "2024"
