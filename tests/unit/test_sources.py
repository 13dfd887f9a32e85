"""sources: downloads against a local HTTP server, mirrors, local paths, checksums, layout check."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import shutil
import tarfile
import threading
import time
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.helpers import dvc, write_files
from visionpipe import archive, archive_members, fsutil, sources
from visionpipe.datasets import DATASETS, Official
from visionpipe.sources import ChecksumError, DownloadError, fetch_dataset


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # ZipInfo's fixed 1980 date: the same bytes each run
        zf.writestr(zipfile.ZipInfo("photos/cats/1.jpg"), b"pretend this is a photo\n" * 100)
    return buf.getvalue()


PAYLOAD = _zip_bytes()  # an archive, as a local data.source must be
SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()
REAL_HYMENOPTERA = (
    Path(__file__).resolve().parents[2].parent / "shared/datasets/hymenoptera_data.zip"
)
HYMENOPTERA = DATASETS["hymenoptera"].official
assert HYMENOPTERA is not None
UNREACHABLE = "http://nonexistent.invalid"  # .invalid never resolves (RFC 2606)


@dataclass
class Server:
    """Routes path -> responses (status, body, truncate); the last response repeats."""

    base: str = ""
    routes: dict[str, list[tuple[int, bytes, bool]]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)

    def serve(self, path: str, *responses: tuple[int, bytes] | tuple[int, bytes, bool]) -> str:
        self.routes[path] = [(r[0], r[1], r[2] if len(r) == 3 else False) for r in responses]
        return self.base + path


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.hits[self.path] += 1
            responses = state.routes.get(self.path) or [(404, b"not found", False)]
            status, body, truncate = responses.pop(0) if len(responses) > 1 else responses[0]
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # truncate: promise the whole body, send a tenth, hang up (an interrupted transfer)
            self.wfile.write(body[: len(body) // 10] if truncate else body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    # A short poll interval makes shutdown() quick at teardown.
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's proxy settings must not reroute 127.0.0.1 or turn DNS failures into 502s.
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


def _fetch(source: str | None, tmp_path: Path, **kwargs) -> sources.FetchResult:
    kwargs.setdefault("dataset", "imagefolder")
    kwargs.setdefault("sha256", None)
    kwargs.setdefault("mirror", None)
    kwargs.setdefault("base_dir", tmp_path)
    kwargs.setdefault("backoff_s", 0.0)
    return fetch_dataset(
        kwargs.pop("dataset"), source, kwargs.pop("sha256"), tmp_path / "raw", **kwargs
    )


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_with_sha256(tmp_path: Path, server: Server) -> None:
    url = server.serve("/data/images.zip", (200, PAYLOAD))
    result = _fetch(url, tmp_path, sha256=SHA.upper())
    assert result.path == tmp_path / "raw" / "images.zip"
    assert result.path.read_bytes() == PAYLOAD
    assert (result.origin, result.sha256, result.md5, result.size) == (url, SHA, MD5, len(PAYLOAD))
    assert _files(tmp_path / "raw") == ["images.zip"]


def test_a_url_as_an_address_bar_shows_it_is_sent_percent_encoded(
    tmp_path: Path, server: Server
) -> None:
    # Spaces and accents as a browser shows them; http.client refuses them raw.
    server.serve("/zips%20%C3%A9%20%23/photos%20utf8.zip", (200, PAYLOAD))
    result = _fetch(f"{server.base}/zips é %23/photos utf8.zip", tmp_path)
    assert result.path.read_bytes() == PAYLOAD
    # What is sent for other hosts, ports, users and a `%` that starts no escape.
    assert [
        sources._requested(u) for u in ("http://Bücher.de/100%.zip", "http://ü@STRAßE.de:81/")
    ] == [
        "http://xn--bcher-kva.de/100%25.zip",
        "http://%C3%BC@xn--strae-oqa.de:81/",
    ]
    # A URL no attempt can send is said at once, not retried.
    bad = f"{server.base.rsplit(':', 1)[0]}:80x/images.zip"
    with pytest.raises(DownloadError, match=r"not a valid URL \(nonnumeric port") as refused:
        _fetch(bad, tmp_path)
    assert "attempts" not in str(refused.value)
    with pytest.raises(DownloadError, match=r"not a valid URL \(Port out of range"):
        _fetch("http://münchen.de:99999/x.zip", tmp_path)


def test_retries_server_errors(tmp_path: Path, server: Server) -> None:
    url = server.serve("/flaky.tar.gz", (500, b"oops"), (503, b"busy"), (200, PAYLOAD))
    result = _fetch(url, tmp_path, sha256=SHA)
    assert result.path.read_bytes() == PAYLOAD
    assert server.hits["/flaky.tar.gz"] == 3


def test_gives_up_after_attempts(tmp_path: Path, server: Server) -> None:
    url = server.serve("/down.zip", (502, b"bad gateway"))
    with pytest.raises(DownloadError, match=r"HTTP 502.*after 3 attempts.*data\.source"):
        _fetch(url, tmp_path)
    assert server.hits["/down.zip"] == 3
    assert _files(tmp_path / "raw") == []


def test_interrupted_transfer_retried_and_leaves_nothing(tmp_path: Path, server: Server) -> None:
    url = server.serve("/cut.zip", (200, PAYLOAD, True))
    with pytest.raises(DownloadError, match="IncompleteRead"):
        _fetch(url, tmp_path)
    assert server.hits["/cut.zip"] == 3
    assert _files(tmp_path / "raw") == []  # no partial file, no temp file


def test_404_not_retried(tmp_path: Path, server: Server) -> None:
    url = server.base + "/missing.zip"
    with pytest.raises(DownloadError, match=r"missing\.zip: HTTP 404 Not Found\..*data\.source"):
        _fetch(url, tmp_path)
    assert server.hits["/missing.zip"] == 1


def test_checksum_mismatch_deletes_file(tmp_path: Path, server: Server) -> None:
    url = server.serve("/images.zip", (200, PAYLOAD))
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        _fetch(url, tmp_path, sha256=wrong)
    message = str(err.value)
    for part in ("images.zip", "sha256", f"expected {wrong}", f"got {SHA}", "data.sha256"):
        assert part in message
    assert _files(tmp_path / "raw") == []


def test_checksum_mismatch_of_a_local_file_says_the_file_itself_is_kept(tmp_path: Path) -> None:
    source = tmp_path / "mine.zip"
    source.write_bytes(PAYLOAD)
    with pytest.raises(ChecksumError) as err:
        _fetch(str(source), tmp_path, sha256="0" * 64)
    assert f"from {source}:" in str(err.value)
    assert "its copy was deleted, the source left as it is" in str(err.value)
    assert source.read_bytes() == PAYLOAD
    assert _files(tmp_path / "raw") == []


def test_a_linked_source_is_named_as_the_user_gave_it(tmp_path: Path) -> None:
    """An archive versioned with `dvc add` under a symlink cache is a link to a file named by
    its md5 in the cache: messages name the path the user set, not that file."""
    repo = tmp_path / "data"
    repo.mkdir()
    (repo / "mine.zip").write_bytes(PAYLOAD)
    dvc(repo, "init", "-q", "--no-scm")
    dvc(repo, "config", "cache.type", "symlink")
    dvc(repo, "add", "-q", "mine.zip")
    source = repo / "mine.zip"
    assert source.is_symlink()
    assert _fetch(str(source), tmp_path).origin == str(source)
    with pytest.raises(ChecksumError, match=f"from {re.escape(str(source))}:"):
        _fetch(str(source), tmp_path, sha256="0" * 64)


def _fake_official(monkeypatch: pytest.MonkeyPatch, url: str, md5: str | None = MD5) -> None:
    official = Official(url, "cifar-10-python.tar.gz", md5)
    monkeypatch.setitem(DATASETS, "cifar10", replace(DATASETS["cifar10"], official=official))


def test_mirror_folder_used_before_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_official(monkeypatch, f"{UNREACHABLE}/cifar-10-python.tar.gz")

    def no_network(*args: object) -> None:
        raise AssertionError("the network was used although the mirror has the file")

    monkeypatch.setattr(sources, "_fetch_once", no_network)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "cifar-10-python.tar.gz").write_bytes(PAYLOAD)
    result = _fetch(None, tmp_path, dataset="cifar10", mirror=str(mirror))
    assert result.path == tmp_path / "raw" / "cifar-10-python.tar.gz"
    assert result.origin == str(mirror / "cifar-10-python.tar.gz")
    assert result.md5 == MD5

    # Relative DATA_MIRROR and file:// URL forms reach the same folder.
    assert _fetch(None, tmp_path, dataset="cifar10", mirror="mirror").md5 == MD5
    assert _fetch(None, tmp_path, dataset="cifar10", mirror=mirror.as_uri()).md5 == MD5


def test_the_official_archive_in_the_dvc_cache_is_copied_not_fetched_again(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # DVC runs download again when its code changes, data/raw removed, offline or not.
    _fake_official(monkeypatch, server.serve("/cifar-10-python.tar.gz", (200, PAYLOAD)))
    dvc(tmp_path, "init", "-q", "--no-scm")
    cached = tmp_path / ".dvc" / "cache" / "files" / "md5" / MD5[:2] / MD5[2:]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(PAYLOAD)
    monkeypatch.chdir(tmp_path)
    result = fetch_dataset("cifar10", None, None, Path("data/raw"), base_dir=tmp_path, mirror=None)
    assert result.origin == str(cached) and result.md5 == MD5
    assert server.hits["/cifar-10-python.tar.gz"] == 0
    assert (tmp_path / "data" / "raw" / "cifar-10-python.tar.gz").read_bytes() == PAYLOAD
    # A data.sha256 that the official bytes do not have is the pin's fault, said at once.
    with pytest.raises(ChecksumError, match=r"data.sha256 is 0+, but the official .* fix data"):
        _fetch(None, tmp_path, dataset="cifar10", sha256="0" * 64)
    assert server.hits["/cifar-10-python.tar.gz"] == 0
    # A damaged copy there is passed over, and the archive fetched.
    cached.write_bytes(PAYLOAD[:-1] + b"!")
    assert _fetch(None, tmp_path, dataset="cifar10").origin.startswith(server.base)
    assert server.hits["/cifar-10-python.tar.gz"] == 1


def test_a_queued_run_without_a_mirror_is_told_where_data_mirror_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `DATA_MIRROR=... dvc exp run --queue` sets it for the command that queues, not for the
    # worker that runs the experiment (in .dvc/tmp/exps/).
    _fake_official(monkeypatch, f"{UNREACHABLE}/cifar-10-python.tar.gz")
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmpab12"
    temp = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "standalone" / "tmpcd34"
    copy.mkdir(parents=True)
    temp.mkdir(parents=True)  # `dvc exp run --temp`: the command's own environment
    said = []
    for cwd in (tmp_path, copy, temp):
        monkeypatch.chdir(cwd)
        with pytest.raises(DownloadError) as err:
            _fetch(None, tmp_path, dataset="cifar10")
        said.append(str(err.value))
    queued = "A queued run reads DATA_MIRROR where the queue's workers start"
    assert queued not in said[0] and queued not in said[2]
    assert said[1].endswith(
        f"{queued}, not where the run was queued: `DATA_MIRROR=... uv run dvc queue start`."
    ), said[1]


def test_the_log_names_the_setting_that_gave_the_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # launch.data_root serves as the mirror when DATA_MIRROR is unset: a user who never set
    # DATA_MIRROR must not be told to look at it.
    _fake_official(monkeypatch, f"{UNREACHABLE}/cifar-10-python.tar.gz")
    (tmp_path / "datasets").mkdir()
    with caplog.at_level(logging.INFO), pytest.raises(DownloadError):
        _fetch(None, tmp_path, dataset="cifar10", mirror="datasets", mirror_name="launch.data_root")
    assert "launch.data_root " + str(tmp_path / "datasets") + " has no cifar-10" in caplog.text
    assert "DATA_MIRROR" not in caplog.text.split("could not be downloaded")[0]
    # Holding an image-folder export instead: how to train on it.
    (tmp_path / "datasets" / "cifar10-jpeg.zip").write_bytes(b"PK")
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(DownloadError):
        _fetch(None, tmp_path, dataset="cifar10", mirror="datasets", mirror_name="launch.data_root")
    said = "(it holds cifar10-jpeg.zip: to train on one, name it in data.source, `data.source:"
    assert f"{said} cifar10-jpeg.zip` in conf/config.yaml, which `dvc exp run` reads" in caplog.text
    assert "and `dvc repro` after `uv run visionpipe params`)" in caplog.text
    # As DATA_MIRROR, which a relative data.source is not found in: the folder as data_root; a
    # Mac's ._ beside it is no archive.
    (tmp_path / "datasets" / "._cifar10-jpeg.zip").write_bytes(b"\0\x05\x16\x07")
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(DownloadError):
        _fetch(None, tmp_path, dataset="cifar10", mirror="datasets", mirror_name="DATA_MIRROR")
    assert (
        f"{said} cifar10-jpeg.zip` in conf/config.yaml, and this folder as launch.data_root in"
        in (caplog.text)
    )
    assert "._" not in caplog.text
    # Another dataset's archive (ants and bees asked, a CIFAR export there): not offered.
    official = Official(f"{UNREACHABLE}/hymenoptera_data.zip", "hymenoptera_data.zip", MD5)
    monkeypatch.setitem(
        DATASETS, "hymenoptera", replace(DATASETS["hymenoptera"], official=official)
    )
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(DownloadError):
        _fetch(None, tmp_path, dataset="hymenoptera", mirror="datasets")
    assert "has no hymenoptera_data.zip; falling back" in caplog.text, caplog.text
    assert "it holds" not in caplog.text
    # Nor CIFAR-100's official archive for CIFAR-10.
    (tmp_path / "datasets" / "cifar10-jpeg.zip").unlink()
    (tmp_path / "datasets" / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b")
    caplog.clear()
    with caplog.at_level(logging.INFO), pytest.raises(DownloadError):
        _fetch(None, tmp_path, dataset="cifar10", mirror="datasets")
    assert "has no cifar-10-python.tar.gz; falling back" in caplog.text, caplog.text


def test_mirror_checks_official_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "cifar-10-python.tar.gz").write_bytes(PAYLOAD)  # not the real archive
    with pytest.raises(
        ChecksumError, match=rf"md5 expected {DATASETS['cifar10'].official.md5}, got {MD5}"
    ):
        _fetch(None, tmp_path, dataset="cifar10", mirror=str(mirror))
    assert _files(tmp_path / "raw") == []


def test_mirror_without_file_falls_back(
    tmp_path: Path,
    server: Server,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _fake_official(monkeypatch, server.serve("/official/cifar-10-python.tar.gz", (200, PAYLOAD)))
    (tmp_path / "empty_mirror").mkdir()
    with caplog.at_level(logging.WARNING):
        result = _fetch(None, tmp_path, dataset="cifar10", mirror=str(tmp_path / "empty_mirror"))
    assert result.origin.endswith("/official/cifar-10-python.tar.gz")
    assert "has no cifar-10-python.tar.gz" in caplog.text


def test_mirror_url(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    official = server.serve("/official/cifar-10-python.tar.gz", (200, PAYLOAD))
    _fake_official(monkeypatch, official)
    server.serve("/mirror/cifar-10-python.tar.gz", (200, PAYLOAD))
    result = _fetch(None, tmp_path, dataset="cifar10", mirror=server.base + "/mirror/")
    assert result.origin == server.base + "/mirror/cifar-10-python.tar.gz"
    assert server.hits["/official/cifar-10-python.tar.gz"] == 0

    result = _fetch(None, tmp_path, dataset="cifar10", mirror=server.base + "/elsewhere")  # 404
    assert result.origin == official


def test_relative_source_resolved_against_base_dir(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "inputs").mkdir(parents=True)
    (project / "inputs" / "imgs.zip").write_bytes(PAYLOAD)
    result = _fetch("inputs/imgs.zip", tmp_path, base_dir=project, sha256=SHA)
    assert result.path == tmp_path / "raw" / "imgs.zip"
    assert result.origin == str(project / "inputs" / "imgs.zip")
    assert result.path.read_bytes() == PAYLOAD

    uri = (project / "inputs" / "imgs.zip").as_uri()
    assert _fetch(uri, tmp_path).sha256 == SHA


def test_directory_source_is_packed(tmp_path: Path) -> None:
    (tmp_path / "photos" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "photos" / "train" / "cat" / "1.png").write_bytes(b"png")
    first = _fetch("photos", tmp_path)
    assert first.path == tmp_path / "raw" / "folder.tar"
    second = _fetch(str(tmp_path / "photos"), tmp_path, sha256=first.sha256)
    assert second.sha256 == first.sha256  # packing is reproducible, so a sha256 pin works
    # The same photos in a folder named otherwise give the same data/raw, byte for byte.
    shutil.copytree(tmp_path / "photos", tmp_path / "my photos 2024")
    other = _fetch("my photos 2024", tmp_path)
    assert (other.path, other.sha256) == (first.path, first.sha256)
    # A colon in a folder's name does not make it a URL scheme (s3:// is one).
    shutil.copytree(tmp_path / "photos", tmp_path / "photos:2024")
    assert _fetch("photos:2024", tmp_path).sha256 == first.sha256
    with pytest.raises(ChecksumError, match=r"folder\.tar"):
        _fetch("photos", tmp_path, sha256="f" * 64)
    assert _files(tmp_path / "raw") == []


def test_a_folder_too_large_for_the_disk_is_refused_before_packing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A full disk at the end of a long pack wastes it and leaves the disk full for all else.
    write_files(tmp_path / "photos", {"cats/1.jpg": b"j" * 5000, "cats/clip.mov": b"v" * 90000})
    frees: dict[Path, int] = {}
    monkeypatch.setattr(fsutil, "free_bytes", lambda path: frees.get(Path(path), 10**12))
    monkeypatch.setattr(archive, "free_bytes", lambda path: frees.get(Path(path), 10**12))
    frees[tmp_path / "raw"] = 9000  # the image's 5,000 bytes fit, the tar's 10 KiB do not
    with pytest.raises(fsutil.DiskFullError) as full:
        _fetch("photos", tmp_path)
    assert str(full.value) == (
        f"packing {tmp_path / 'photos'} takes 10.0 KiB in {tmp_path / 'raw'}, and its disk"
        " has 8.8 KiB free: free some space and run the command again"
    )
    assert _files(tmp_path / "raw") == []
    # The size is the tar's own, long and non-ASCII names (PAX headers) and all.
    deep = "/".join(["d" * 50] * 12)  # a PAX record of more than one block
    odd = {f"猫/{'n' * 120}.jpg": b"j" * 700, "a/b.png": b"p" * 513, f"{deep}/c.jpg": b"c"}
    write_files(tmp_path / "photos", odd)
    frees[tmp_path / "raw"] = 10**6
    tar = _fetch("photos", tmp_path).path
    root = (tmp_path / "photos").resolve()
    entries = archive_members.dir_entries(root).entries
    stored = sources._read_by_preprocess([e.name for e in entries])
    assert archive._tar_size(root, entries, stored) == tar.stat().st_size
    tar.unlink()
    # It fits, but DVC's cache, which DVC copies each output into, has no room for it.
    project = tmp_path / "project"
    project.mkdir()
    dvc(project, "init", "-q", "--no-scm")
    frees[project / ".dvc" / "cache" / "files" / "md5"] = 1000
    photos, raw = str(tmp_path / "photos"), project / "raw"
    args = {"base_dir": tmp_path, "mirror": None, "backoff_s": 0.0}
    with caplog.at_level(logging.WARNING):
        fetch_dataset("imagefolder", photos, None, raw, **args)
    assert "and the disk of DVC's cache" in caplog.text and "has 1000 bytes free" in caplog.text
    caplog.clear()
    # The cache already holds those bytes (the same photos ran before): nothing to copy.
    md5 = hashlib.md5((raw / "folder.tar").read_bytes()).hexdigest()
    held = project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    held.parent.mkdir(parents=True)
    held.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        fetch_dataset("imagefolder", photos, None, raw, **args)
    assert "DVC's cache" not in caplog.text
    held.unlink()
    dvc(project, "config", "cache.type", "hardlink,symlink")  # DVC links, copies nothing
    with caplog.at_level(logging.WARNING):
        fetch_dataset("imagefolder", photos, None, raw, **args)
    assert "DVC's cache" not in caplog.text


def test_a_folder_source_is_packed_with_the_bytes_preprocess_reads(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    files = {
        "cats/1.jpg": b"jpeg",
        "cats/clip.mov": b"video" * 1000,  # a phone's videos beside its photos
        "cats/IMG_2": b"suffixless",
        "@eaDir/1.jpg/SYNOPHOTO_THUMB_XL.jpg": b"thumbnail",
        "dogs/2.PNG": b"png",
        "notes.txt": b"note",
    }
    write_files(photos, files)
    with tarfile.open(_fetch("photos", tmp_path).path) as tar:
        packed = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    kept = {"cats/1.jpg", "dogs/2.PNG"}
    listed = {n: (d if n in kept else b"") for n, d in files.items() if "@eaDir" not in n}
    assert packed == listed  # a NAS's thumbnails are left out, names and all
    # The official CIFAR-10 batches, unpacked into a folder: every file is read.
    cifar = tmp_path / "cifar-10-batches-py"
    cifar.mkdir()
    for name in ("data_batch_1", "batches.meta", "readme.html"):
        (cifar / name).write_bytes(name.encode())
    with tarfile.open(_fetch(str(cifar), tmp_path).path) as tar:
        assert all(tar.extractfile(m).read() == m.name.encode() for m in tar.getmembers())


def test_a_folder_source_never_opens_the_files_it_stores_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A video the user may not read, or a cloud drive's placeholder that opening downloads:
    its name is packed without its bytes ever being read."""
    photos = tmp_path / "photos"
    (photos / "cats").mkdir(parents=True)
    (photos / "cats" / "1.jpg").write_bytes(b"jpeg")
    (photos / "cats" / "clip.mov").write_bytes(b"video" * 1000)
    real_open = open

    def guarded(file, *args, **kwargs):
        if str(file).endswith(".mov"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(archive, "open", guarded, raising=False)
    with tarfile.open(_fetch("photos", tmp_path).path) as tar:
        assert {m.name: m.size for m in tar.getmembers()} == {"cats/1.jpg": 4, "cats/clip.mov": 0}


@pytest.mark.parametrize("cache_type", ["symlink", "hardlink"])
def test_a_folder_tracked_by_dvc_packs_as_its_photos_whatever_the_cache_links(
    tmp_path: Path, cache_type: str
) -> None:
    """A photos folder versioned with `dvc add` under a symlink cache holds links into the DVC
    cache, outside the folder (here a cache shared by projects, `dvc cache dir`): they are the
    photos, packed as a plain copy of the folder packs."""
    photos = tmp_path / "data" / "photos"
    for name in ("cats/1.jpg", "dogs/2.jpg", "dogs/clip.mov"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(name.encode() * 10)
    plain = _fetch(str(photos), tmp_path)
    repo = tmp_path / "data"
    dvc(repo, "init", "-q", "--no-scm")
    dvc(repo, "cache", "dir", str(tmp_path / "shared-cache"))
    dvc(repo, "config", "cache.type", cache_type)
    dvc(repo, "add", "-q", "photos")
    assert (photos / "cats" / "1.jpg").is_symlink() == (cache_type == "symlink")
    assert _fetch(str(photos), tmp_path, sha256=plain.sha256).sha256 == plain.sha256
    # Other links out of the folder are still refused.
    (tmp_path / "secret").write_bytes(b"s")
    (photos / "cats" / "3.jpg").symlink_to(tmp_path / "secret")
    with pytest.raises(
        archive_members.UnsafeArchiveError, match=r"'cats/3.jpg'.*outside the folder"
    ):
        _fetch(str(photos), tmp_path)
    (photos / "cats" / "3.jpg").unlink()
    # So are links to files merely named like cache files: a copy of the secret, or a file of
    # another project's cache.
    lookalikes = {
        "copy": tmp_path / "x" / "files" / "md5" / "ab" / ("c" * 30),
        "other": tmp_path / "other" / ".dvc" / "cache" / "files" / "md5" / "ab" / ("d" * 30),
    }
    for name, lookalike in lookalikes.items():
        lookalike.parent.mkdir(parents=True)
        shutil.copyfile(tmp_path / "secret", lookalike)
        (photos / "cats" / f"{name}.jpg").symlink_to(lookalike)
        with pytest.raises(
            archive_members.UnsafeArchiveError,
            match=rf"'cats/{name}.jpg'.*named like a DVC cache file, but outside the DVC cache"
            rf" of the project holding the folder \({re.escape(str(tmp_path / 'shared-cache'))}\)",
        ):
            _fetch(str(photos), tmp_path)
        (photos / "cats" / f"{name}.jpg").unlink()


def test_a_folder_source_packs_alike_whatever_hidden_files_lie_beside_the_photos(
    tmp_path: Path,
) -> None:
    """The same photos on a Mac (Finder's .DS_Store, AppleDouble ._ files), on a NAS (@eaDir/
    thumbnails) and on Windows (Thumbs.db) pack into the same tar: a data.sha256 pinned on one
    machine holds on the others, and a folder opened in Finder re-runs nothing."""
    photos = tmp_path / "photos"
    for name in ("cats/1.jpg", "dogs/2.jpg", "dogs/clip.mov"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(name.encode())
    first = _fetch("photos", tmp_path)
    for name in (".DS_Store", "cats/.DS_Store", "cats/._1.jpg", "@eaDir/1.jpg/THUMB.jpg"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(b"metadata")
    (photos / "dogs" / "Thumbs.db").write_bytes(b"thumbnails")
    (photos / "cats" / "Icon\r").write_bytes(b"")  # Finder's custom folder icon
    assert _fetch("photos", tmp_path, sha256=first.sha256).sha256 == first.sha256
    # A folder of nothing but such files is said to be one.
    (tmp_path / "mac").mkdir()
    (tmp_path / "mac" / ".DS_Store").write_bytes(b"metadata")
    with pytest.raises(ValueError, match="no regular files but 1 hidden or system file:"):
        _fetch("mac", tmp_path)


def test_icloud_placeholders_in_a_folder_source_are_named_as_photos_not_downloaded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A folder copied from iCloud Drive with "Optimize Mac Storage": dogs/ holds placeholders only.
    photos = tmp_path / "photos"
    write_files(photos, {"cats/1.jpg": b"jpeg", "cats/2.jpg": b"jpeg"})
    write_files(photos, {f"dogs/.IMG_{i}.HEIC.icloud": b"bplist00" for i in range(5)})
    (photos / "cats" / ".notes.txt.icloud").write_bytes(b"bplist00")  # no photo's
    with caplog.at_level(logging.WARNING):
        _fetch("photos", tmp_path)
    said = "left out 5 files, iCloud Drive's placeholders of photos not downloaded (dogs/.IMG_0"
    assert said in caplog.text and "and 2 more, of dogs/): download them" in caplog.text
    # The folder is read as it is: downloaded, it needs only the stage run again.
    assert "on the folder), then `uv run dvc repro -f -s download`" in caplog.text


def test_a_macos_photos_library_is_refused_with_the_way_to_export_classes(
    tmp_path: Path,
) -> None:
    library = tmp_path / "Photos Library.photoslibrary"
    write_files(library, {"originals/A/1.jpeg": b"jpeg", "resources/derivatives/A/1_c.jpeg": b"j"})
    for inside in (library, library / "originals"):  # its 0/ to F/ are no classes either
        with pytest.raises(DownloadError, match="a macOS Photos library, whose folders are its"):
            _fetch(str(inside), tmp_path)
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_a_folder_a_mac_named_is_found_by_the_name_typed(tmp_path: Path) -> None:
    """Finder writes "Vacances été" decomposed (NFD); the param is typed composed (NFC), and
    macOS would open it: so does the stage, absolute or relative."""
    typed = "Vacances \u00e9t\u00e9"
    photos = tmp_path / unicodedata.normalize("NFD", typed)
    (photos / "cats").mkdir(parents=True)
    (photos / "cats" / "1.jpg").write_bytes(b"jpeg")
    assert not (tmp_path / typed).exists()
    whole = _fetch(str(tmp_path / typed), tmp_path)
    assert _fetch(typed, tmp_path).sha256 == whole.sha256
    with pytest.raises(DownloadError, match="does not exist"):
        _fetch(str(tmp_path / "Vacances \u00e9t\u00e9 2"), tmp_path)


def test_a_source_naming_an_unset_variable_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("VP_DATA", raising=False)
    for written in ("$VP_DATA/cifar.zip", "${VP_DATA}/cifar.zip"):
        with pytest.raises(DownloadError, match=r"names \$VP_DATA, which is not set where the"):
            _fetch(written, tmp_path)
    with pytest.raises(DownloadError, match="does not exist") as err:
        _fetch(str(tmp_path / "price $5.zip"), tmp_path)  # no variable's name
    assert "not set" not in str(err.value)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cats").mkdir()
    (tmp_path / "d" / "cats" / "1.jpg").write_bytes(b"jpeg")
    monkeypatch.setenv("VP_DATA", str(tmp_path))
    assert _fetch("$VP_DATA/d", tmp_path).sha256


def test_missing_local_source_explains(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as err:
        _fetch("data/nowhere.zip", tmp_path)
    message = str(err.value)
    for part in ("data.source", str(tmp_path / "data/nowhere.zip"), "dvc exp run --queue"):
        assert part in message
    assert "launch.data_root" in message and "absolute data.source" in message
    # An absolute path that is not there: no talk of where relative ones are resolved.
    with pytest.raises(DownloadError) as err:
        _fetch(str(tmp_path / "nope.zip"), tmp_path)
    assert str(err.value) == (
        f"data.source '{tmp_path / 'nope.zip'}' does not exist: check the path, or copy the data"
        " there"
    )


def test_dns_failure_is_fast_and_actionable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"data\.source"):
        _fetch(f"{UNREACHABLE}/x.tar.gz", tmp_path, backoff_s=1.0)
    _fake_official(monkeypatch, f"{UNREACHABLE}/cifar-10-python.tar.gz")
    with pytest.raises(DownloadError) as err:
        _fetch(None, tmp_path, dataset="cifar10", backoff_s=1.0)
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "data.source=/abs/path/cifar-10-python.tar.gz" in message
    assert "DATA_MIRROR" in message
    # Ways that last beyond one run, also where a recipe sets data.source itself (hymenoptera).
    assert "a local copy of it, named cifar-10-python.tar.gz. For every experiment:" in message
    assert "conf/local/machine.yaml (launch: {data_root: /abs/folder})" in message
    assert "conf/config.yaml" not in message
    assert _files(tmp_path / "raw") == []


def test_imagefolder_needs_source(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"'imagefolder' has no official archive.*data\.source"):
        _fetch(None, tmp_path)


@pytest.mark.parametrize("bad", ["s3://bucket/images.zip", "file://otherhost/x.zip"])
def test_unsupported_location(tmp_path: Path, bad: str) -> None:
    with pytest.raises(DownloadError, match=r"data\.source"):
        _fetch(bad, tmp_path)


def test_source_inside_dest_dir_refused(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "mine.zip").write_bytes(PAYLOAD)
    with pytest.raises(DownloadError, match="owns and empties"):
        _fetch("raw/mine.zip", tmp_path)


def test_dest_dir_keeps_only_the_new_archive(tmp_path: Path, server: Server) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("old.zip", "older.tar.gz", ".images.zip.abc123.tmp"):
        (raw / name).write_bytes(b"stale")
    (raw / "source.json").write_text("{}")  # not an archive: the stage's own record stays
    url = server.serve("/images.zip", (200, PAYLOAD))
    _fetch(url, tmp_path)
    assert _files(raw) == ["images.zip", "source.json"]


def _hymenoptera_zip(path: Path, counts: dict[tuple[str, str], int]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for (split, cls), n in counts.items():
            for i in range(n):
                zf.writestr(f"hymenoptera_data/{split}/{cls}/{i}.jpg", b"jpg")
    return path


def test_hymenoptera_layout_reports_counts(tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    _hymenoptera_zip(good / "hymenoptera_data.zip", HYMENOPTERA.layout)
    _fetch(None, tmp_path / "a", dataset="hymenoptera", mirror=str(good))
    short = dict(HYMENOPTERA.layout) | {("val", "bees"): 80}
    _hymenoptera_zip(bad / "hymenoptera_data.zip", short)
    with pytest.raises(DownloadError, match=r"expected .*val/bees 83.* found .*val/bees 80"):
        _fetch(None, tmp_path / "b", dataset="hymenoptera", mirror=str(bad))


def test_hymenoptera_from_mirror_is_checked(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _hymenoptera_zip(mirror / "hymenoptera_data.zip", {("train", "ants"): 3, ("val", "bees"): 2})
    with pytest.raises(DownloadError, match="official hymenoptera layout"):
        _fetch(None, tmp_path, dataset="hymenoptera", mirror=str(mirror))
    assert _files(tmp_path / "raw") == []
    # As data.source the same zip is the user's choice: no layout check.
    result = _fetch(str(mirror / "hymenoptera_data.zip"), tmp_path, dataset="hymenoptera")
    assert result.path.name == "hymenoptera_data.zip"


@pytest.mark.realdata
def test_real_hymenoptera_zip(tmp_path: Path) -> None:
    if not REAL_HYMENOPTERA.is_file():
        pytest.skip(f"{REAL_HYMENOPTERA} not present")
    result = _fetch(None, tmp_path, dataset="hymenoptera", mirror=str(REAL_HYMENOPTERA.parent))
    assert result.size == REAL_HYMENOPTERA.stat().st_size


def test_an_ordinary_folder_packs_to_the_same_bytes_as_ever(tmp_path: Path) -> None:
    """folder.tar's bytes are data.sha256 pins and DVC's cache keys: the same photos must pack
    to the same digest from one release to the next (and on a Mac, a NAS or Linux)."""
    photos = tmp_path / "photos"
    files = {
        "cats/IMG_0001.jpg": b"\xff\xd8jpeg-one",
        "cats/2019/b.PNG": b"png" * 300,
        "cats/clip.MOV": b"video" * 50,
        "dogs/d.jpeg": b"dog",
        "dogs/.DS_Store": b"x",
        "dogs/notes.txt": b"n",
        "birds/x.heic": b"h",
    }
    write_files(photos, files)
    (photos / "dogs" / "alias.jpg").symlink_to("d.jpeg")
    digest = "8abe2e1aa56298aea7c69390473949431b162ba288edced539ec467d01aa7af1"
    assert _fetch("photos", tmp_path).sha256 == digest


def test_the_tutorial_s_own_layout_of_images_beside_label_files_says_what_to_rename(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The PyTorch tutorial's ants/bees copy: train/ants_image/*.jpg beside train/ants_label/*.txt.
    photos = tmp_path / "hymenoptera"
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            (photos / split / f"{cls}_image").mkdir(parents=True)
            (photos / split / f"{cls}_label").mkdir(parents=True)
            (photos / split / f"{cls}_image" / "1.jpg").write_bytes(b"x")
            (photos / split / f"{cls}_label" / "1.txt").write_text(cls)
    with caplog.at_level(logging.WARNING):
        _fetch("hymenoptera", tmp_path)
    said = (
        "train/ants_image/, train/bees_image/, val/ants_image/, val/bees_image/ beside "
        "train/ants_label/, train/bees_label/, val/ants_label/, val/bees_label/, the layout of a"
        " tutorial's own Dataset class"
    )
    assert said in caplog.text, caplog.text
    assert (
        "Rename each ants_image/ to ants/, bees_image/ to bees/ so the classes are ants, bees"
        in (caplog.text)
    )
    # Plural and capitalised, as other copies name them.
    caplog.clear()
    for split in ("train", "val"):
        for cls in ("ants", "bees"):
            (photos / split / f"{cls}_image").rename(photos / split / f"{cls.title()}_Images")
            (photos / split / f"{cls}_label").rename(photos / split / f"{cls.title()}_Labels")
    with caplog.at_level(logging.WARNING):
        _fetch("hymenoptera", tmp_path)
    assert "Rename each Ants_Images/ to Ants/, Bees_Images/ to Bees/" in caplog.text, caplog.text


def test_a_folder_source_names_a_class_folder_with_no_image(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    photos = tmp_path / "photos"
    for name in ("cats/1.jpg", "dogs/2.jpg", "videos_only/clip.MOV", "videos_only/notes.txt"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        (photos / name).write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        _fetch("photos", tmp_path)
    assert "1 folder holds files but no image, so no class or split comes of it" in caplog.text
    assert caplog.text.rstrip().endswith(": videos_only/")


def test_dicom_scans_in_a_folder_source_are_named_as_it_is_packed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Stored empty (names only: preprocess reads no such file), they could not be told later.
    photos = tmp_path / "photos"
    dicom = bytes(128) + b"DICM" + bytes(64)
    write_files(photos, {"cats/1.jpg": b"jpeg", "scans/IM0000": dicom, "scans/NOTES": b"text"})
    write_files(photos, {"scans/1.2.840.113619.2.55.3.7": dicom, "scans/clip.mov": dicom})
    with caplog.at_level(logging.WARNING):
        _fetch("photos", tmp_path)
    assert (
        "photos: 2 DICOM scans (scans/1.2.840.113619.2.55.3.7, scans/IM0000) among its files:"
        " DICOM scans are not read: export them as PNG or TIFF"
    ) in caplog.text, caplog.text
