"""archive: safe reading of zip/tar/folder sources, refusal of every unsafe member kind."""

from __future__ import annotations

import gzip
import io
import logging
import os
import pickle
import re
import shlex
import stat
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers import write_files
from visionpipe.archive import iter_files, list_files, open_files, pack_directory
from visionpipe.archive_members import (
    UndecodableNameError,
    UnsafeArchiveError,
    warn_empty_folders,
)
from visionpipe.images import Unread, is_hidden


def _zip(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """members: (name, data, unix st_mode or 0)."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode:
                info.create_system = 3  # Unix, so the mode bits mean what they say
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


def _tar(path: Path, members: Sequence[tuple[str, bytes | None, bytes, str]]) -> Path:
    """members: (name, data or None, tar type, linkname)."""
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for name, data, kind, linkname in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = linkname
            info.size = len(data) if data is not None else 0
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _snapshot(tmp_path: Path) -> set[str]:
    """Every path under tmp_path and beside it: where an escaping member would land."""
    inside = {str(p) for p in tmp_path.rglob("*")}
    return inside | {str(p) for p in tmp_path.parent.iterdir()}


REG, SYM, LNK = tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
LINK_MODE = stat.S_IFLNK | 0o777

UNSAFE_ZIPS: dict[str, list[tuple[str, bytes, int]]] = {
    "absolute": [("/etc/evil.txt", b"x", 0)],
    "dotdot": [("../evil.txt", b"x", 0)],
    "nested_dotdot": [("a/../../evil.txt", b"x", 0)],
    "drive": [("C:\\evil.txt", b"x", 0)],
    "drive_slash": [("c:/evil.txt", b"x", 0)],
    "backslash_root": [("\\evil.txt", b"x", 0)],
    "backslash_dotdot": [("a\\..\\..\\evil.txt", b"x", 0)],
    "symlink_abs": [("link", b"/etc/passwd", LINK_MODE)],
    "symlink_up": [("a/link", b"../../x", LINK_MODE)],
    "char_device": [("dev", b"", stat.S_IFCHR | 0o644)],
    "fifo": [("pipe", b"", stat.S_IFIFO | 0o644)],
    "duplicate": [("a.txt", b"x", 0), ("a.txt", b"y", 0)],
}
# The member each case must name in its error.
UNSAFE_ZIP_MEMBER = {k: v[-1][0] for k, v in UNSAFE_ZIPS.items()}

UNSAFE_TARS: dict[str, list[tuple[str, bytes | None, bytes, str]]] = {
    "absolute": [("/etc/evil.txt", b"x", REG, "")],
    "dotdot": [("../evil", b"x", REG, "")],
    "symlink_abs": [("link", None, SYM, "/etc/passwd")],
    "symlink_up": [("a/link", None, SYM, "../../x")],
    "hardlink_abs": [("hard", None, LNK, "/etc/passwd")],
    "hardlink_up": [("hard", None, LNK, "../outside")],
    "char_device": [("dev", None, tarfile.CHRTYPE, "")],
    "block_device": [("blk", None, tarfile.BLKTYPE, "")],
    "fifo": [("pipe", None, tarfile.FIFOTYPE, "")],
    # Lexically "d/../y" is "y", inside; but d is a link to the root, so it really is "../y".
    "symlink_chain": [("d", None, SYM, "."), ("d/x", None, SYM, "../y")],
    # The file is written through link "d", which leads outside.
    "under_link": [("d", None, SYM, "/tmp"), ("d/evil", b"x", REG, "")],
    "duplicate": [("a.txt", b"x", REG, ""), ("a.txt", None, SYM, "/etc/passwd")],
}
UNSAFE_TAR_MEMBER = {k: v[-1][0] for k, v in UNSAFE_TARS.items()}


@pytest.mark.parametrize("case", sorted(UNSAFE_ZIPS))
@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile warns when writing the duplicate
def test_unsafe_zip_refused(tmp_path: Path, case: str) -> None:
    src = _zip(tmp_path / "bad.zip", [("ok/good.txt", b"fine", 0), *UNSAFE_ZIPS[case]])
    before = _snapshot(tmp_path)
    pattern = re.escape(repr(UNSAFE_ZIP_MEMBER[case]))
    with pytest.raises(UnsafeArchiveError, match=pattern) as err:
        next(iter_files(src))  # not even the safe member comes out first
    assert str(src) in str(err.value)
    with pytest.raises(UnsafeArchiveError, match=pattern):
        list_files(src)
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
@pytest.mark.parametrize("case", sorted(UNSAFE_TARS))
def test_unsafe_tar_refused(tmp_path: Path, case: str, suffix: str) -> None:
    members = [("ok/good.txt", b"fine", REG, ""), *UNSAFE_TARS[case]]
    src = _tar(tmp_path / f"bad{suffix}", members)
    before = _snapshot(tmp_path)
    pattern = re.escape(repr(UNSAFE_TAR_MEMBER[case]))
    with pytest.raises(UnsafeArchiveError, match=pattern) as err:
        next(iter_files(src))
    assert str(src) in str(err.value)
    with pytest.raises(UnsafeArchiveError, match=pattern):
        list_files(src)
    assert _snapshot(tmp_path) == before


def test_zip_happy_path(tmp_path: Path) -> None:
    src = _zip(
        tmp_path / "data.zip",
        [
            ("root/", b"", stat.S_IFDIR | 0o755),
            ("root/train/b.txt", b"B", 0),
            ("root/train/a.txt", b"A", stat.S_IFREG | 0o644),
            ("root/alias.txt", b"train/a.txt", LINK_MODE),  # inside: followed
            ("root/dirlink", b"train", LINK_MODE),  # to a folder: skipped
        ],
    )
    files = list(iter_files(src))
    assert files == [
        ("root/alias.txt", b"A"),
        ("root/train/a.txt", b"A"),
        ("root/train/b.txt", b"B"),
    ]
    assert list_files(src) == [name for name, _ in files]


def test_tar_gz_happy_path(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = _tar(
        tmp_path / "data.tgz",
        [
            ("./", None, tarfile.DIRTYPE, ""),
            ("./train/z.txt", b"Z", REG, ""),
            ("./train/a.txt", b"A", REG, ""),
            ("./train/same.txt", None, LNK, "./train/a.txt"),  # hardlinks name from the root
            ("./sym.txt", None, SYM, "train/z.txt"),
            ("./to_dir", None, SYM, "train"),
        ],
    )
    with caplog.at_level(logging.WARNING):
        files = list(iter_files(src))
    # Archive order, links followed, the link to a folder skipped and reported.
    assert files == [
        ("train/z.txt", b"Z"),
        ("train/a.txt", b"A"),
        ("train/same.txt", b"A"),
        ("sym.txt", b"Z"),
    ]
    assert "to_dir" in caplog.text
    assert list_files(src) == [name for name, _ in files]


def test_directory_source(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    (root / "b").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"a")
    (root / "b" / "c.txt").write_bytes(b"c")
    (root / "link.txt").symlink_to(root / "b" / "c.txt")
    (root / "dirlink").symlink_to(root / "b")  # followed folders could loop: skipped
    assert list(iter_files(root)) == [
        ("a.txt", b"a"),
        ("b/c.txt", b"c"),
        ("link.txt", b"c"),
    ]


def test_directory_refuses_outside_symlink(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "a.txt").write_bytes(b"a")
    (tmp_path / "secret").write_bytes(b"s")
    (root / "leak").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafeArchiveError, match=r"'leak'.*outside") as err:
        list_files(root)
    assert "member" not in str(err.value)  # a folder's files, in a folder's words


def test_directory_skips_fifos_and_sockets_naming_them_never_opening_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Opening a named pipe blocks until something writes to it: it is skipped, named, like
    any entry that is not a regular file; a hidden one is left out as hidden files are."""
    root = tmp_path / "imgs"
    (root / "dogs").mkdir(parents=True)
    (root / "dogs" / "1.jpg").write_bytes(b"a")
    os.mkfifo(root / "dogs" / "x.jpg")
    os.mkfifo(root / "dogs" / ".hp")
    with caplog.at_level(logging.WARNING):
        assert list(iter_files(root)) == [("dogs/1.jpg", b"a")]
    assert "dogs/x.jpg" in caplog.text and "not a regular file" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        pack_directory(root, tmp_path / "out.tar", leave_out=is_hidden)
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert tar.getnames() == ["dogs/1.jpg"]
    assert "dogs/x.jpg" in caplog.text and ".hp" not in caplog.text


def test_a_fifo_in_a_tar_is_refused_saying_what_to_do(tmp_path: Path) -> None:
    src = _tar(
        tmp_path / "p.tar", [("p/a.jpg", b"a", REG, ""), ("p/x.jpg", None, tarfile.FIFOTYPE, "")]
    )
    with pytest.raises(UnsafeArchiveError, match=r"'p/x.jpg': fifo .*re-create the archive"):
        list_files(src)


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_links_in_an_archive_to_no_file_are_skipped_naming_each(
    tmp_path: Path, suffix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop of links or a dangling one, as `zip -y` and `tar` store a folder's, is skipped
    and named, as the folder form does: an extractor could make no file of it either."""
    links = {
        "p/birds/loopa": "loopb",
        "p/birds/loopb": "loopa",
        "p/dogs/dangling.jpg": "nowhere.jpg",
        "p/dogs/up": "../birds",
    }
    if suffix == ".zip":
        members = [(n, t.encode(), LINK_MODE) for n, t in links.items()]
        src = _zip(tmp_path / "p.zip", [("p/birds/1.jpg", b"b", 0), *members])
    else:
        tar_links = [(n, None, SYM, t) for n, t in links.items()]
        src = _tar(tmp_path / "p.tar.gz", [("p/birds/1.jpg", b"b", REG, ""), *tar_links])
    with caplog.at_level(logging.WARNING):
        assert list_files(src) == ["p/birds/1.jpg"]
    broken, folders = caplog.records[0].getMessage(), caplog.records[1].getMessage()
    assert "3 links that lead to no file" in broken
    assert all(n in broken for n in ("p/birds/loopa", "p/birds/loopb", "p/dogs/dangling.jpg"))
    assert "1 link to a folder" in folders and "p/dogs/up" in folders


def test_a_folder_names_every_broken_link_apart_from_folder_links(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "imgs"
    (root / "birds").mkdir(parents=True)
    (root / "birds" / "1.jpg").write_bytes(b"b")
    (root / "birds" / "loopa").symlink_to("loopb")
    (root / "birds" / "loopb").symlink_to("loopa")
    (root / "birds" / "uploop").symlink_to("..")
    for i in range(25):
        (root / "birds" / f"lost{i:02}.jpg").symlink_to(f"gone{i}.jpg")
    with caplog.at_level(logging.WARNING):
        assert list_files(root) == ["birds/1.jpg"]
    broken, folders = caplog.records[0].getMessage(), caplog.records[1].getMessage()
    assert "27 links that lead to no file" in broken and "and 7 more" in broken
    assert "birds/loopa" in broken and "birds/lost00.jpg" in broken
    assert "1 link to a folder" in folders and "birds/uploop" in folders


def test_unknown_type_lists_supported_kinds(tmp_path: Path) -> None:
    src = tmp_path / "data.rar"
    src.write_bytes(b"not an archive at all")
    with pytest.raises(ValueError, match=r"data\.rar.*\.zip, \.tar, \.tar\.gz or \.tgz"):
        list_files(src)


def test_content_sniffed_without_suffix(tmp_path: Path) -> None:
    src = _zip(tmp_path / "download.tmp", [("a.txt", b"a", 0)])
    assert list(iter_files(src)) == [("a.txt", b"a")]
    src = _tar(tmp_path / "other.bin", [("b.txt", b"b", REG, "")])
    assert list(iter_files(src)) == [("b.txt", b"b")]


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.zip"):
        list_files(tmp_path / "nope.zip")


def test_corrupt_zip(tmp_path: Path) -> None:
    src = tmp_path / "bad.zip"
    src.write_bytes(b"PK\x03\x04 this is not really a zip")
    with pytest.raises(ValueError, match=r"bad\.zip.*zip"):
        list_files(src)


@pytest.mark.parametrize("keep", [0.5, -4])  # half the file; all but the gzip trailer's end
def test_truncated_tar_gz(tmp_path: Path, keep: float) -> None:
    members = [(f"f{i}.bin", os.urandom(5000), REG, "") for i in range(4)]
    full = _tar(tmp_path / "full.tar.gz", members).read_bytes()
    src = tmp_path / "cut.tar.gz"
    src.write_bytes(full[: int(len(full) * keep)] if keep > 0 else full[: int(keep)])
    with pytest.raises(ValueError, match=r"cut\.tar\.gz.*(corrupt|truncated|readable)"):
        list(iter_files(src))


def test_bad_gzip(tmp_path: Path) -> None:
    src = tmp_path / "bad.tar.gz"
    src.write_bytes(gzip.compress(b"hello")[:-6] + b"garbage!")
    with pytest.raises(ValueError, match=r"bad\.tar\.gz"):
        list_files(src)


def _tree(root: Path) -> None:
    (root / "train" / "cat").mkdir(parents=True)
    (root / "train" / "dog").mkdir(parents=True)
    (root / "train" / "cat" / "1.png").write_bytes(b"cat1")
    (root / "train" / "dog" / "2.png").write_bytes(b"dog2" * 1000)
    (root / "test.txt").write_bytes(b"t")


def test_pack_directory_is_deterministic(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    pack_directory(src, tmp_path / "one.tar")
    os.utime(src / "test.txt", (1_000_000, 1_000_000))  # mtimes must not leak into the tar
    os.chmod(src / "train" / "cat" / "1.png", 0o600)
    pack_directory(src, tmp_path / "two.tar")
    assert (tmp_path / "one.tar").read_bytes() == (tmp_path / "two.tar").read_bytes()

    with tarfile.open(tmp_path / "one.tar") as tf:
        members = tf.getmembers()
    assert [m.name for m in members] == ["test.txt", "train/cat/1.png", "train/dog/2.png"]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.mode, m.uname, m.gname) == (0, 0, 0, 0o644, "", "")
    assert list(iter_files(tmp_path / "one.tar")) == list(iter_files(src))
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic temp file is gone


def test_pack_directory_refuses_outside_symlink(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    (src / "leak").symlink_to("/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match=r"'leak'.*outside the folder: copy what it"):
        pack_directory(src, tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists()


def test_links_to_an_outside_folder_or_to_nothing_are_skipped_and_named_not_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Only a file outside the folder would be read; a folder or a missing target never is.
    src = tmp_path / "src"
    _tree(src)
    (tmp_path / "elsewhere").mkdir()
    (src / "more").symlink_to(tmp_path / "elsewhere")
    (src / "IMG_9.jpg").symlink_to("/nonexistent/IMG_9.jpg")
    with caplog.at_level(logging.WARNING):
        pack_directory(src, tmp_path / "out.tar")
    assert "skipped 1 link that leads to no file" in caplog.text and "IMG_9.jpg" in caplog.text
    assert "skipped 1 link to a folder (not followed: they could loop): more" in caplog.text


def test_a_zip_that_lists_no_folders_still_names_a_folder_of_no_image(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `zip -D` and Python's zipfile write no folder entries: the folders its files sit in count.
    from visionpipe.preprocess import _warn_empty_folders

    files = [("cat/1.jpg", b"c", 0), ("dog/2.jpg", b"d", 0), ("horse/a.MOV", b"v", 0)]
    src = _zip(tmp_path / "photos.zip", files)
    with open_files(src) as opened, caplog.at_level(logging.WARNING):
        assert opened.folders == []
        _warn_empty_folders(src, opened)
    assert "1 folder holds files but no image, so no class or split comes of it" in caplog.text
    assert caplog.text.rstrip().endswith(": horse/")


def test_pack_directory_refuses_a_link_to_a_file_named_like_a_dvc_cache_file(
    tmp_path: Path,
) -> None:
    """Only links into the DVC cache of the project holding the folder are followed: a copy of
    a private file under a cache-like name is not, in a folder of no DVC project."""
    src = tmp_path / "src"
    _tree(src)
    lookalike = tmp_path / "x" / "files" / "md5" / "ab" / ("c" * 30)
    lookalike.parent.mkdir(parents=True)
    lookalike.write_bytes(b"private")
    (src / "leak.jpg").symlink_to(lookalike)
    with pytest.raises(
        UnsafeArchiveError,
        match=r"'leak.jpg'.*named like a DVC cache file, but the folder is in no DVC project",
    ):
        pack_directory(src, tmp_path / "out.tar")
    assert not (tmp_path / "out.tar").exists()


def test_pack_directory_refuses_empty_and_self(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no regular files"):
        pack_directory(tmp_path / "empty", tmp_path / "out.tar")
    _tree(tmp_path / "src")
    with pytest.raises(ValueError, match="inside the folder"):
        pack_directory(tmp_path / "src", tmp_path / "src" / "out.tar")


def test_pack_directory_names_the_empty_folders_it_cannot_pack(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A class folder whose photos are not copied yet would vanish from the tar (it holds no
    # folder entries): the model would train without that class, unsaid.
    src = tmp_path / "src"
    _tree(src)
    (src / "train" / "bird" / "2019").mkdir(parents=True)
    (src / "train" / "fish").mkdir()
    (src / "train" / "fish" / ".DS_Store").write_bytes(b"\0")  # left out: fish/ packs nothing
    (src / "train" / "@eaDir").mkdir()  # a NAS's thumbnail folder is not a class to miss
    with caplog.at_level(logging.WARNING):
        pack_directory(src, tmp_path / "out.tar", leave_out=is_hidden)
    assert "2 folders hold no files, so no class or split comes of them" in caplog.text
    assert "train/bird/, train/fish/" in caplog.text  # the outer folder, not also bird/2019/
    assert "eaDir" not in caplog.text
    caplog.clear()
    pack_directory(src / "train" / "cat", tmp_path / "cat.tar")
    assert "no files" not in caplog.text


def test_pack_directory_names_hidden_folders_of_images_it_leaves_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = {f"photos/.secret/{i}.png": b"p" for i in range(3)}
    files |= {"photos/cats/1.jpg": b"c", "photos/cats/._1.jpg": b"mac", "photos/.DS_Store": b"x"}
    files |= {"photos/.cache/notes.txt": b"n", "photos/dogs/.thumbs/a/2.jpg": b"t"}
    files["photos/dogs/2.jpg"] = b"d"
    write_files(tmp_path / "src", files)
    with caplog.at_level(logging.WARNING):
        pack_directory(tmp_path / "src", tmp_path / "out.tar", leave_out=is_hidden)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        f"{tmp_path / 'src'}: left out 4 images in hidden folders (a name starting with '.'):"
        " photos/.secret/ (3), photos/dogs/.thumbs/ (1); rename a folder without its dot if it"
        " holds photos to train on"
    )


def test_a_folder_of_no_image_is_named_as_no_class(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder of videos beside the class folders is no class, as an empty one: said, naming
    it, in the folder form (the download stage) and the zip form (preprocess) alike; a folder
    beside its parent's own photos (cats/raw/ beside cats/1.jpg) is no class folder."""
    files = {
        "photos/cats/1.jpg": b"c",
        "photos/cats/raw/1.CR2": b"r",
        "photos/dogs/2019/2.jpg": b"d",
        "photos/videos_only/clip.MOV": b"v",
        "photos/videos_only/2019/clip2.MOV": b"v",
    }
    write_files(tmp_path, files)
    said = "1 folder holds files but no image, so no class or split comes of it"
    with caplog.at_level(logging.WARNING):
        pack_directory(tmp_path / "photos", tmp_path / "out.tar")
    assert said in caplog.text and caplog.text.rstrip().endswith(": videos_only/")
    caplog.clear()
    dirs = sorted({str(Path(n).parent) + "/" for n in files} | {"photos/"})
    src = _zip(
        tmp_path / "photos.zip", [(d, b"", 0) for d in dirs] + [(n, d, 0) for n, d in files.items()]
    )
    with open_files(src) as opened, caplog.at_level(logging.WARNING):
        warn_empty_folders(Path(src.name), opened.folders, opened.names)
    assert said in caplog.text and caplog.text.rstrip().endswith(": photos/videos_only/")


def _spans_of(source: Path) -> dict[str, bytes | None]:
    """name -> the bytes read back from its span in another reader (None: no span)."""
    from visionpipe.archive import open_files, read_span

    with open_files(source) as files:
        spans = {name: files.span(name) for name in files.names}
        assert all(files.read(n) == read_span(s) for n, s in spans.items() if s is not None)
    return {name: None if s is None else read_span(s) for name, s in spans.items()}


def test_spans_read_the_same_bytes_from_zips_tars_and_folders(tmp_path: Path) -> None:
    data = {"a/one.bin": os.urandom(3000), "a/two.txt": b"hello " * 500, "b/é.txt": b"x"}
    stored = tmp_path / "stored.zip"
    with (
        zipfile.ZipFile(stored, "w", zipfile.ZIP_STORED) as z,
        zipfile.ZipFile(tmp_path / "deflated.zip", "w", zipfile.ZIP_DEFLATED) as d,
    ):
        for name, blob in data.items():
            z.writestr(name, blob)
            d.writestr(name, blob)
    folder = tmp_path / "folder"
    for name, blob in data.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(blob)
    for source in (stored, tmp_path / "deflated.zip", folder):
        assert _spans_of(source) == data, source
    plain = _tar(tmp_path / "plain.tar", [(n, b, tarfile.REGTYPE, "") for n, b in data.items()])
    assert _spans_of(plain) == data
    gz = _tar(tmp_path / "packed.tar.gz", [(n, b, tarfile.REGTYPE, "") for n, b in data.items()])
    assert _spans_of(gz) == dict.fromkeys(data), "a compressed tar is read in order only"


def test_an_archive_replaced_at_its_path_is_read_anew(tmp_path: Path) -> None:
    # A long-lived process (a notebook's kernel) reads spans of a zip, which is then replaced by
    # another at the same path: its spans are read from the new file, not an old open handle.
    path = tmp_path / "a.zip"
    for round_, names in enumerate((["x/one.txt"], ["x/zero.txt", "x/two.txt"])):
        data = {name: f"{name} {round_}".encode() * 50 for name in names}
        with zipfile.ZipFile(tmp_path / "new.zip", "w", zipfile.ZIP_STORED) as z:
            for name, blob in data.items():
                z.writestr(name, blob)
        os.replace(tmp_path / "new.zip", path)
        assert _spans_of(path) == data


def test_a_span_of_a_damaged_zip_member_is_refused(tmp_path: Path) -> None:
    from visionpipe.archive import open_files, read_span

    source = tmp_path / "photos.zip"
    with zipfile.ZipFile(source, "w", zipfile.ZIP_STORED) as z:
        z.writestr("cats/1.jpg", b"A" * 1000)
    with open_files(source) as files:
        span = files.span("cats/1.jpg")
    blob = bytearray(source.read_bytes())
    blob[blob.index(b"A" * 1000) + 500] = ord("B")  # one flipped byte in the member's data
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(bytes(blob))
    assert span is not None
    with pytest.raises(ValueError, match="fails its CRC check"):
        read_span(span._replace(path=str(damaged)))


class _UnflaggedName(zipfile.ZipInfo):
    """A member whose name is stored as these bytes with the UTF-8 flag unset, as macOS's
    Archive Utility (UTF-8) and a Chinese Windows (GBK) write names."""

    def __init__(self, raw: bytes) -> None:
        super().__init__(raw.decode("cp437"))
        self.raw = raw

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # zipfile's hook for the stored name
        return self.raw, self.flag_bits & ~0x800


def _unflagged_zip(path: Path, names: Sequence[str], encoding: str) -> Path:
    """A zip of these names stored in `encoding` with the UTF-8 flag unset, as a Windows of that
    code page (or macOS's Archive Utility, for utf-8) writes them."""
    with zipfile.ZipFile(path, "w") as z:
        for name in names:
            z.writestr(_UnflaggedName(name.encode(encoding)), b"x")
    return path


def test_unflagged_utf8_names_read_as_utf8_and_other_code_pages_are_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"  # the stages run there: the folder advised is beside it
    project.mkdir()
    monkeypatch.chdir(project)
    mac, windows = tmp_path / "mac.zip", tmp_path / "windows.zip"
    names = {"photos/猫/照片 1.jpg": b"cat", "photos/cafe\u0301/x.jpg": b"coffee"}
    for path, encoding, members in ((mac, "utf-8", names), (windows, "gbk", list(names)[:1])):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            for name in members:
                z.writestr(_UnflaggedName(name.encode(encoding)), names[name])
    with caplog.at_level(logging.WARNING):
        assert dict(iter_files(mac)) == names
        assert _spans_of(mac) == names
        assert not caplog.text
        assert list_files(windows) == ["photos/├¿/╒╒╞¼ 1.jpg"]  # GBK's bytes read as cp437
    assert "not marked UTF-8 that are not all UTF-8 either: 1 (such as" in caplog.text
    # Both readings, and a way to unpack it that works on every system (Debian's unzip has no -O).
    assert "in its maker's Windows code page the first may read 'photos/猫/照片 1.jpg' in gbk" in (
        caplog.text
    )
    _run_the_advised_command(caplog.text, tmp_path / "project")
    unpacked = tmp_path / "windows-unpacked"  # absolute in the advice, as queued runs need
    assert f"set data.source to {str(unpacked)!r}" in caplog.text
    assert (unpacked / "photos" / "猫" / "照片 1.jpg").read_bytes() == b"cat"


def _run_the_advised_command(said: str, cwd: Path) -> None:
    """The warning's `uv run python -c ...` unpack command, run in this Python as a shell would."""
    command = re.search(r"`uv run python -c (.+?)`", said)
    assert command is not None, said
    python = f"{shlex.quote(sys.executable)} -c {command.group(1)}"
    subprocess.run(python, shell=True, cwd=cwd, check=True)


def test_the_unpack_command_makes_folders_of_a_zip_with_windows_separators(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PowerShell's and .NET's zips separate folders with '\\'.
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    windows = _unflagged_zip(tmp_path / "ps.zip", ("照片\\狗\\0.jpg", "照片\\表\\1.jpg"), "gbk")
    with caplog.at_level(logging.WARNING):
        list_files(windows)
    _run_the_advised_command(caplog.text, project)
    unpacked = tmp_path / "ps-unpacked"
    assert sorted(p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*.jpg")) == [
        "照片/狗/0.jpg",
        "照片/表/1.jpg",
    ]


def test_gbk_names_that_read_as_utf8_by_chance_are_warned_of_with_both_readings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 猫, 牛 and 鸭 in GBK are valid UTF-8: è, ţ and Ѽ, letters of two scripts.
    windows = _unflagged_zip(
        tmp_path / "animals.zip", ("猫/IMG_0001.jpg", "牛/IMG_0002.jpg", "鸭/IMG_0003.jpg"), "gbk"
    )
    with caplog.at_level(logging.WARNING):
        assert list_files(windows) == ["è/IMG_0001.jpg", "ţ/IMG_0002.jpg", "Ѽ/IMG_0003.jpg"]
    assert (
        "read as UTF-8, of which 'è' and 2 more are folders of one letter each, of CYRILLIC, LATIN"
        in (caplog.text)
    )
    assert (
        "the first may read '猫/IMG_0001.jpg' in gbk, '챔/IMG_0001.jpg' in cp949,"
    ) in caplog.text
    assert "(with the right one's code page in place of gbk)" in caplog.text
    # Names of one script each, and CJK beside them, are a Mac's UTF-8: no word.
    caplog.clear()
    mac = tmp_path / "mac.zip"
    with zipfile.ZipFile(mac, "w") as z:
        # Real words of several scripts (Debian's zip flags none), Ukrainian's apostrophe (a
        # modifier letter), º and µ: each name keeps to one script.
        for name in (
            *("Ñandú/1.jpg", "café/2.jpg", "猫/3.jpg", "ねこ/4.jpg", "кошка/5.jpg", "γάτα/6.jpg"),
            *("мʼята/7.jpg", "foto_nº1/8.jpg", "10µm/9.jpg", "Kraków-Київ/a.jpg", "5μm_Ø/b.jpg"),
            *("А/c.jpg", "Б/d.jpg"),  # an alphabet's letters as classes (CoMNIST's)
        ):
            z.writestr(_UnflaggedName(name.encode()), b"x")
    with caplog.at_level(logging.WARNING):
        list_files(mac)
    assert not caplog.text


def test_gbk_names_of_two_characters_or_of_one_read_as_utf8_are_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 小猫 reads Сè (two scripts in one word); 猫, 牛 and 鸭 alone read è, ţ and Ѽ.
    for names, said in (
        (("小猫/1.jpg", "cat/2.jpg"), "of which 'Сè' mixes scripts (CYRILLIC, LATIN) in one word"),
        (
            ("猫/1.jpg", "牛/2.jpg", "鸭/3.jpg"),
            "of which 'è' and 2 more are folders of one letter",
        ),
    ):
        windows = _unflagged_zip(tmp_path / f"{len(names[0])}.zip", names, "gbk")
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            list_files(windows)
        assert said in caplog.text, caplog.text


def test_a_western_windows_s_names_read_as_cp437_are_not_warned_of_others_get_each_reading(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A German Windows's zip (cp850): ä, ü, ß are the same bytes in cp437, read right.
    german = _unflagged_zip(
        tmp_path / "de.zip", ("Tiere/Bär/0.jpg", "Tiere/Küken/1.jpg", "Tiere/Strauß/2.jpg"), "cp850"
    )
    with caplog.at_level(logging.WARNING):
        assert list_files(german) == ["Tiere/Bär/0.jpg", "Tiere/Küken/1.jpg", "Tiere/Strauß/2.jpg"]
    assert not caplog.text
    # ø is cp850's own (cp437's ¢ there): warned of, with cp850's reading among the others.
    danish = _unflagged_zip(tmp_path / "dk.zip", ["Smørrebrød/0.jpg"], "cp850")
    with caplog.at_level(logging.WARNING):
        assert list_files(danish) == ["Sm¢rrebr¢d/0.jpg"]
    assert "'Smørrebrød/0.jpg' in cp850" in caplog.text
    assert 'metadata_encoding="cp850"' in caplog.text  # the command unpacks it so
    # A French Windows's château (â is 0x83 in cp437 and cp850 alike): no word either, though
    # Shift-JIS reads the bytes as chテeau.
    caplog.clear()
    french = _unflagged_zip(tmp_path / "fr.zip", ["château/0.jpg"], "cp850")
    with caplog.at_level(logging.WARNING):
        assert list_files(french) == ["château/0.jpg"]
    assert not caplog.text
    # Another tool's cp1252 (ü is ³ in cp437 and cp850): cp1252's reading.
    german = _unflagged_zip(tmp_path / "de1252.zip", ["Hündin/0.jpg"], "cp1252")
    with caplog.at_level(logging.WARNING):
        list_files(german)
    assert "the first may read 'Hündin/0.jpg' in cp1252," in caplog.text
    assert 'metadata_encoding="cp1252"' in caplog.text
    # Spanish and German words of a Windows (cp850): no CJK reading of their bytes is taken
    # for one (Shift-JIS reads camión as cami｢n, Korean's cp949 Bär as B꼛, Öl as a rare kanji).
    words = ["camión", "niño", "música", "Ñandú", "Tür", "Bücher", "Öl", "Åland", "éléphant"]
    words += ["DSC_Ñandú", "château"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        read = list_files(
            _unflagged_zip(tmp_path / "es.zip", [f"{w}/0.jpg" for w in words], "cp850")
        )
    assert sorted(read) == sorted(f"{w}/0.jpg" for w in words) and not caplog.text
    # Japanese (Shift-JIS): kana and kanji that cp437 reads as Latin letters (ネコ âlâR, 猫 öL)
    # are warned of, with the Japanese reading first; a word with a Latin capital or ー too.
    for name in (
        "ねこ",
        "ネコ",
        "猫",
        "Tシャツ",
        "ケーキ",
        "人々",
        "01_ネコ",
        "写真【1】",
        "ラーメン・餃子",
    ):
        caplog.clear()
        japanese = _unflagged_zip(tmp_path / "jp.zip", [f"{name}/0.jpg"], "shift_jis")
        with caplog.at_level(logging.WARNING):
            list_files(japanese)
        assert f"the first may read '{name}/0.jpg' in shift_jis" in caplog.text, caplog.text


def test_chinese_classes_of_one_character_are_no_alphabet_for_a_letter_elsewhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 山 石 木 read ľ ɽ ʯ (one script, but no letters in a row); an ASCII one-letter folder
    # elsewhere in the zip is no neighbour of theirs.
    for names in (
        ["山/1.jpg", "石/2.jpg", "木/3.jpg"],
        ["train/山/1.jpg", "train/石/2.jpg", "train/木/3.jpg", "train/女/4.jpg"],
        ["A/猫/1.jpg", "B/猫/2.jpg"],
        ["x/猫/1.jpg", "x/牛/2.jpg", "y/a/3.jpg"],
    ):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            list_files(_unflagged_zip(tmp_path / "cn.zip", names, "gbk"))
        assert "is a name of one letter, which GBK reads" in caplog.text or (
            "folders of one letter each" in caplog.text
        ), names
    # The other reading shown is of the name the warning names.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        list_files(_unflagged_zip(tmp_path / "cn.zip", ["山/1.jpg", "石/2.jpg", "木/3.jpg"], "gbk"))
    said = re.search(r"of which '(.)' is a name of one letter, which GBK reads (.)", caplog.text)
    assert said and f"the first may read '{said[2]}/" in caplog.text, caplog.text


def test_a_chinese_class_of_one_character_read_as_one_accented_letter_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 猫 in GBK is C3 A8, UTF-8's è: beside an ASCII class, no mix of scripts gives it away.
    windows = _unflagged_zip(tmp_path / "pets.zip", ("猫/1.jpg", "dog/2.jpg"), "gbk")
    with caplog.at_level(logging.WARNING):
        assert list_files(windows) == ["dog/2.jpg", "è/1.jpg"]
    assert "of which 'è' is a name of one letter, which GBK reads 猫" in caplog.text
    assert "the first may read '猫/1.jpg' in gbk" in caplog.text
    # A numbered class of it too.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        list_files(_unflagged_zip(tmp_path / "n.zip", ["01_猫/1.jpg", "02_dog/2.jpg"], "gbk"))
    assert "of which '01_è' is a name of one letter, which GBK reads 01_猫" in caplog.text
    # A Mac's (UTF-8) Portuguese "é" among words, a Swedish å/ ä/ ö/, alphabets' letters (a
    # Spanish one's ñ beside a/ to z/, é/ beside e/, Greek, Cyrillic), ordinals and µ: letters
    # indeed.
    caplog.clear()
    spanish = [f"{c}/1.jpg" for c in "abcdefghijklmnñopqrstuvwxyz"]
    for names in (
        ["o gato é bonito/1.jpg", "cão/2.jpg"],
        ["ö/1.jpg", "å/2.jpg", "ä/3.jpg"],
        spanish,
        [f"letras_españolas/{name}" for name in spanish],  # below a folder past ASCII
        ["e/1.jpg", "é/2.jpg"],
        ["α/1.jpg", "β/2.jpg", "γ/3.jpg", "δ/4.jpg"],
        ["а/1.jpg", "б/2.jpg", "в/3.jpg"],
        ["1º/1.jpg", "2º/2.jpg"],
        ["µ/1.jpg", "m/2.jpg"],
    ):
        with caplog.at_level(logging.WARNING):
            list_files(_unflagged_zip(tmp_path / "m.zip", names, "utf-8"))
        assert not caplog.text, names


def test_the_utf8_name_a_zip_keeps_beside_its_code_page_s_is_read(tmp_path: Path) -> None:
    # WinRAR, Bandizip and Info-ZIP add Info-ZIP's Unicode Path field to a name in the code page.
    raw = "猫/照片 1.jpg".encode("gbk")
    utf8 = "猫/照片 1.jpg".encode()
    field = struct.pack("<HHB", 0x7075, 5 + len(utf8), 1) + struct.pack("<I", zlib.crc32(raw))
    stale = struct.pack("<HHB", 0x7075, 5 + len(utf8), 1) + struct.pack("<I", 0) + utf8
    zipped = tmp_path / "bandizip.zip"
    with zipfile.ZipFile(zipped, "w") as z:
        member = _UnflaggedName(raw)
        member.extra = field + utf8
        z.writestr(member, b"cat")
        other = _UnflaggedName("狗/1.jpg".encode("gbk"))
        other.extra = stale  # written for another name: the stored name is read as before
        z.writestr(other, b"dog")
    assert list_files(zipped) == ["╣╖/1.jpg", "猫/照片 1.jpg"]
    # A backslash in it is a letter where the zip was written on Unix (Info-ZIP in a Latin-1
    # locale), a separator where on Windows, as in a name without the field.
    raw, utf8 = "café\\noir/1.jpg".encode("latin-1"), "café\\noir/1.jpg".encode()
    for system, want in ((3, "café\\noir/1.jpg"), (0, "café/noir/1.jpg")):
        with zipfile.ZipFile(zipped, "w") as z:
            member = _UnflaggedName(raw)
            member.create_system = system
            field = struct.pack("<HHB", 0x7075, 5 + len(utf8), 1)
            member.extra = field + struct.pack("<I", zlib.crc32(raw)) + utf8
            z.writestr(member, b"cat")
        assert list_files(zipped) == [want], system


def test_a_zip_s_unflagged_names_are_read_in_one_encoding(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # GBK's 猫 is C3 A8, valid UTF-8 (è): read one by one, "猫 cat/a.jpg" would be UTF-8 and
    # "猫 cat/é.jpg" cp437, and one class folder would become two differently garbled ones, as
    # would a majority of valid names (ten photos 0.jpg ... beside one 猫咪.jpg).
    windows = _unflagged_zip(
        tmp_path / "windows.zip",
        ("猫 cat/a.jpg", "猫 cat/é.jpg", *(f"猫 cat/{i}.jpg" for i in range(10))),
        "gbk",
    )
    with caplog.at_level(logging.WARNING):
        listed = list_files(windows)
    assert {name.split("/")[0] for name in listed} == {"├¿ cat"}, listed
    assert "not all UTF-8 either: 12 (such as" in caplog.text
    # A Mac's zip (UTF-8, unflagged) with one stray Latin-1 name: only that name is cp437.
    mac = tmp_path / "mac.zip"
    with zipfile.ZipFile(mac, "w") as z:
        for name in ("train/café/1.jpg", "train/café/2.jpg", "test/café/3.jpg"):
            z.writestr(_UnflaggedName(name.encode()), b"x")
        z.writestr(_UnflaggedName("train/dog/résumé.txt".encode("latin-1")), b"x")
    listed = list_files(mac)
    assert [n for n in listed if "caf" in n] == [
        "test/café/3.jpg",
        "train/café/1.jpg",
        "train/café/2.jpg",
    ], listed


@pytest.mark.skipif(sys.platform != "linux", reason="other file systems refuse such a name")
def test_names_that_are_not_utf8_are_refused_naming_their_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    bad = os.path.join(bytes(folder), "狗".encode("gbk"))  # what a Chinese Windows's zip leaves
    os.makedirs(bad)
    Path(os.fsdecode(bad), "1.jpg").write_bytes(b"dog")
    with pytest.raises(UndecodableNameError, match=r"the name b'\\xb9\\xb7' is not UTF-8"):
        pack_directory(folder, tmp_path / "folder.tar")
    gbk = tmp_path / "gbk.tar"
    with tarfile.open(gbk, "w", format=tarfile.GNU_FORMAT, encoding="gbk") as tf:
        info = tarfile.TarInfo("狗/1.jpg")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"dog"))
    with pytest.raises(UndecodableNameError, match="convmv -f GBK -t UTF-8"):
        list_files(gbk)


def test_a_backslash_in_a_folder_s_name_is_part_of_the_name_once_packed(tmp_path: Path) -> None:
    # On Linux `dog\puppies` is a folder of its own beside `dog`; read back from the download
    # stage's tar of the folder, it must not become dog/puppies (merged into class dog).
    src = tmp_path / "photos"
    for name in ("dog/1.jpg", "dog\\puppies/2.jpg", "cat\\/3.jpg"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(b"x")
    assert list_files(src) == ["cat\\/3.jpg", "dog/1.jpg", "dog\\puppies/2.jpg"]
    pack_directory(src, tmp_path / "folder.tar")
    assert list_files(tmp_path / "folder.tar") == list_files(src)
    # So does a zip written on Unix or macOS (Info-ZIP's `zip -r` of the folder)...
    with zipfile.ZipFile(unix := tmp_path / "unix.zip", "w") as z:
        for name in ("dog/1.jpg", "dog\\puppies/2.jpg"):
            z.writestr(zipfile.ZipInfo(name), b"x")
    assert [i.create_system for i in zipfile.ZipFile(unix).infolist()] == [3, 3]  # Unix
    assert list_files(unix) == ["dog/1.jpg", "dog\\puppies/2.jpg"]
    # ... but in a zip written on Windows backslashes are separators: its zip tools write them.
    for system in (0, 10):  # MS-DOS (FAT), NTFS
        with zipfile.ZipFile(win := tmp_path / f"win{system}.zip", "w") as z:
            info = zipfile.ZipInfo("dog\\puppies\\2.jpg")
            info.create_system = system
            z.writestr(info, b"x")
        assert list_files(win) == ["dog/puppies/2.jpg"], system


def test_an_image_member_that_unpacks_past_any_image_s_size_is_left_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A zip bomb: a few MB of zip whose `photo.jpg` unpacks to gigabytes of zeros. The limit is
    # lowered here so that the bomb is kilobytes; its members are listed, never read.
    from visionpipe import archive

    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 4096)
    bomb = bytes(5000)
    zipped = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ants/1.jpg", b"\xff\xd8\xff" + bytes(100))
        z.writestr("notes/big.txt", bomb)  # no image, but a photo's link may lead to it
        z.writestr("ants/bomb.jpg", bomb)
        link = zipfile.ZipInfo("ants/x.png")
        link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        z.writestr(link, "../notes/big.txt")
    tarred = tmp_path / "bomb.tar.gz"
    with tarfile.open(tarred, "w:gz") as t:
        info = tarfile.TarInfo("bees/bomb.png")
        info.size = len(bomb)
        t.addfile(info, io.BytesIO(bomb))
    # One such image leaves the rest of a collection: it is listed, as a folder's undecodable
    # photo is, and its read gives no bytes, only why (preprocess reports it as undecodable).
    for source, member in ((zipped, "ants/bomb.jpg"), (tarred, "bees/bomb.png")):
        with open_files(source) as files:
            assert member in files.names and files.span(member) is None
            unread = files.read(member)
        assert isinstance(unread, Unread) and unread == b"", type(unread)
        assert unread.reason.startswith("unpacks to more than 4.0 KiB, more than any image")
        assert unread.reason.endswith("(a zip bomb, or a damaged archive): left unread")
        assert pickle.loads(pickle.dumps(unread)).reason == unread.reason  # to a worker
    with open_files(zipped) as files:  # through a photo's link, never read whole either
        assert isinstance(files.read("ants/x.png"), Unread)
    # A member whose header says less than it unpacks to stops at the limit when read apart.
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 1 << 20)
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("ants/bomb.jpg", bomb)
    with open_files(zipped) as files:
        span = files.span("ants/bomb.jpg")
    assert span is not None
    monkeypatch.setattr(archive, "MAX_MEMBER_BYTES", 4096)
    with pytest.raises(ValueError, match=r"unpacks to more than 4\.0 KiB, above what its header"):
        archive.read_span(span)


def test_the_folder_advised_for_a_queued_run_is_beside_the_project_not_its_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from visionpipe import zip_names

    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpab12cd"  # DVC's queued copy
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert zip_names._beside_project() == tmp_path
    # And the zip to unpack is the project's, the copy's being gone once the run ends.
    copied = Path("data/raw/photos.zip")
    assert zip_names._outside_copy(copied) == tmp_path / "project" / "data/raw/photos.zip"
    # Where the run's data.source is a local zip, that one: the project's data/raw/ holds the
    # workspace's own data, maybe another zip.
    origin = tmp_path / "photos.zip"
    origin.write_bytes(b"PK")
    (copy / "dvc.yaml").write_text("stages: {}\n")  # the copy is the project its stages see
    (copy / "params.yaml").write_text(f"data: {{dataset: imagefolder, source: {origin}}}\n")
    assert zip_names._outside_copy(copied) == origin
    monkeypatch.chdir(tmp_path / "project")
    assert zip_names._beside_project() == tmp_path


def test_a_file_s_first_bytes_are_read_without_the_rest(tmp_path: Path) -> None:
    # A look at what a file is (DICOM's magic at 128): a 64 MiB member, stored or deflated to
    # a few kB, gives its first bytes without being read or unpacked whole.
    from visionpipe.archive import open_files, read_head

    head = bytes(128) + b"DICM"
    body = head + bytes(64 << 20)
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        with zipfile.ZipFile(src := tmp_path / f"scans{method}.zip", "w", method) as z:
            z.writestr("scans/IM0000", body)
            z.writestr("scans/short", b"DI")
        with open_files(src) as files:
            span = files.span("scans/IM0000")
            assert span is not None and read_head(span, 132) == head, method
            assert read_head(files.span("scans/short"), 132) == b"DI"
    (folder := tmp_path / "folder").mkdir()
    (folder / "IM0001").write_bytes(head + bytes(10))
    with open_files(folder) as files:
        assert read_head(files.span("IM0001"), 132) == head
