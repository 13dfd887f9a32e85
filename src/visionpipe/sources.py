"""Where the dataset archive comes from: the official URL, a mirror, or the user's data.source.

`fetch_dataset` is the whole download stage: it resolves the source, downloads or copies it into
`dest_dir` atomically (a temp file beside the destination, renamed only once every check passed),
verifies its checksum and, for the official hymenoptera zip, its layout, then removes older
archives from `dest_dir`. Failures say which parameter to change: `data.source`, `data.sha256`
or the DATA_MIRROR environment variable.

Downloads use urllib (honouring the usual *_proxy variables) and retry transient failures
(timeouts, refused or reset connections, HTTP 429 and 5xx) with a short exponential backoff;
other HTTP errors and name-resolution failures fail at once.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from visionpipe import __version__, fsutil, paths
from visionpipe.archive import (
    ARCHIVE_SUFFIXES,
    PACKED_FOLDER,
    ArchiveReadError,
    check_readable,
    list_files,
    pack_directory,
)
from visionpipe.cifar_pickle import is_cifar_python
from visionpipe.datasets import DATASETS
from visionpipe.fsutil import atomic_path
from visionpipe.images import is_hidden, is_image_name
from visionpipe.names import listed

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """The dataset archive could not be fetched, or is not what was expected."""


class ChecksumError(DownloadError):
    """The fetched file's checksum differs from the expected one (the file is deleted)."""


class NetworkError(DownloadError):
    """The server or the network failed (as opposed to a bad file); `status` is the HTTP code."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


_CHUNK = 1 << 20  # bytes per read while streaming
_RETRY_STATUS = {429, 500, 502, 503, 504}
_MAX_RETRY_AFTER_S = 30.0  # honour a server's Retry-After only up to this
_TRANSIENT = (TimeoutError, ConnectionResetError, ConnectionRefusedError, ConnectionAbortedError)


@dataclass(frozen=True)
class FetchResult:
    path: Path  # the archive written in dest_dir
    origin: str  # URL or absolute path it came from, for the record
    sha256: str
    md5: str
    size: int  # bytes


@dataclass(frozen=True)
class _Expect:
    """Checksums the file must have, and the advice to give when it has not."""

    md5: str | None = None
    sha256: str | None = None
    advice: str = ""


Check = Callable[[Path, str], None]  # (file to check, name to show in errors)


def fetch_dataset(
    dataset: str,
    source: str | None,
    sha256: str | None,
    dest_dir: Path,
    *,
    base_dir: Path,
    mirror: str | None,
    mirror_name: str = "DATA_MIRROR",
    attempts: int = 3,
    backoff_s: float = 1.0,
    timeout_s: float = 30.0,
) -> FetchResult:
    """Put the verified archive of `dataset` into `dest_dir` and describe it.

    source: None for the official archive (`mirror`, the DATA_MIRROR folder or base URL, first;
        `mirror_name` says in the log where it was set: DATA_MIRROR or launch.data_root);
        else a local file or folder (relative to `base_dir`), a file:// or an http(s) URL.
        A folder is packed into `<dest_dir>/folder.tar` (PACKED_FOLDER).
    sha256: hex digest the fetched file (or packed folder) must have, when given.
    attempts, backoff_s, timeout_s: download tries in all, first retry delay (doubling), and the
        socket timeout of each try.
    """
    dest_dir = Path(dest_dir)
    net = _Net(attempts=attempts, backoff_s=backoff_s, timeout_s=timeout_s)
    if source is None:
        result = _fetch_official(
            dataset, sha256, dest_dir, Path(base_dir), (mirror, mirror_name), net
        )
    else:
        result = _fetch_source(source, sha256, dest_dir, Path(base_dir), net)
    _remove_others(dest_dir, keep=result.path)
    log.info(
        "%s: %d bytes from %s (sha256 %s)", result.path, result.size, result.origin, result.sha256
    )
    return result


def _fetch_official(
    dataset: str,
    sha256: str | None,
    dest_dir: Path,
    base_dir: Path,
    mirror: tuple[str | None, str],
    net: _Net,
) -> FetchResult:
    official = DATASETS[dataset].official
    if official is None:
        named = [name for name, d in DATASETS.items() if d.official]
        raise DownloadError(
            f"data.dataset {dataset!r} has no official archive (only {', '.join(named)} do):"
            " set data.source to a directory, .zip, .tar.gz or URL of your images"
        )
    dest = dest_dir / official.filename
    expect = _Expect(
        md5=official.md5,
        sha256=_normal_hex(sha256),
        advice="The copy is corrupt or not the official archive: delete it and fetch it again"
        + (" (or fix data.sha256)." if sha256 else "."),
    )
    checks: list[Check] = [functools.partial(_check_layout, dataset)] if official.layout else []
    if (cached := _from_dvc_cache(dest, official.md5, expect, checks)) is not None:
        return cached
    mirror_value, mirror_name = mirror
    if mirror_value:
        where = (mirror_value, mirror_name)
        result = _try_mirror(where, official.filename, dest, expect, checks, base_dir, net)
        if result is not None:
            return result
    # Ways that hold for every experiment first: each `dvc exp run` composes params.yaml from
    # conf/ anew (a -S data.source lasts one run), and a recipe such as `hymenoptera` sets
    # data.source itself, so a data.source in conf/config.yaml would not reach it.
    hint = (
        f"The official {dataset} archive could not be downloaded (no network?). Use a local copy"
        f" of it, named {official.filename}. For every experiment: name the folder holding it in"
        " the git-ignored conf/local/machine.yaml (launch: {data_root: /abs/folder}), as"
        " README.md shows, or in DATA_MIRROR. For one run: `uv run dvc exp run -S"
        f" data.source=/abs/path/{official.filename}`."
    )
    here = Path.cwd().as_posix()
    # A queued run's copy; `dvc exp run --temp` runs its own in standalone/, from the command.
    if not mirror_value and paths.QUEUED_COPY in here and "/exps/standalone/" not in here:
        hint += (
            " A queued run reads DATA_MIRROR where the queue's workers start, not where the run"
            " was queued: `DATA_MIRROR=... uv run dvc queue start`."
        )
    return _download(official.url, dest, expect, checks, net, hint)


def _from_dvc_cache(
    dest: Path, md5: str | None, expect: _Expect, checks: Sequence[Check]
) -> FetchResult | None:
    """The official archive copied from the project's DVC cache, where an earlier run put it:
    DVC runs download again when its code changes (an upgrade), and removes data/raw first;
    the same bytes are here, offline, rather than 170 MB to fetch again. None where the cache
    lacks them or its copy does not verify (logged)."""
    folder = dest.parent.absolute()
    while not folder.is_dir() and folder != folder.parent:  # data/raw, removed by DVC
        folder = folder.parent
    file = paths.cache_file(folder, md5) if md5 else None
    if file is None or not file.is_file():
        return None
    try:  # its MD5 first: the official bytes, whatever data.sha256 says
        result = _copy(file, dest, replace(expect, sha256=None), checks)
    except DownloadError as e:
        log.warning("the copy of %s in DVC's cache will not do (%s); fetching it", dest.name, e)
        return None
    if expect.sha256 is not None and result.sha256 != expect.sha256:
        dest.unlink()
        raise ChecksumError(
            f"data.sha256 is {expect.sha256}, but the official {dest.name} (its MD5 verified,"
            f" copied from DVC's cache) has sha256 {result.sha256}: fix data.sha256, or set it"
            " to null"
        )
    log.info("%s: copied from DVC's cache, where an earlier run put it", dest.name)
    return result


def _try_mirror(
    mirror: tuple[str, str],
    filename: str,
    dest: Path,
    expect: _Expect,
    checks: Sequence[Check],
    base_dir: Path,
    net: _Net,
) -> FetchResult | None:
    """Fetch `filename` from the mirror (its value, and the setting that gave it: DATA_MIRROR or
    launch.data_root, which the log names so the user knows what to change); None (logged) if
    the mirror does not have it."""
    mirror, name = mirror
    scheme = urllib.parse.urlparse(mirror).scheme
    if scheme in ("http", "https"):
        url = f"{mirror.rstrip('/')}/{urllib.parse.quote(filename)}"
        try:
            return _download(url, dest, expect, checks, net, hint="")
        except NetworkError as e:
            log.warning("%s: %s Falling back to the official URL.", name, e)
            return None
    folder = _local_path(mirror, base_dir, param=name)
    candidate = folder / filename
    if not candidate.is_file():
        what = "is not a folder" if not folder.is_dir() else f"has no {filename}"
        log.warning(
            "%s %s %s%s; falling back to the official URL",
            *(name, folder, what, _others(folder, name == "launch.data_root", filename)),
        )
        return None
    log.info("using %s from %s", candidate, name)
    return _copy(candidate, dest, expect, checks)


def _others(folder: Path, relative: bool, official: str) -> str:
    """The archives `folder` holds instead of the `official` one that are of its dataset by
    their name (an image-folder export, such as cifar10-jpeg.zip for cifar-10-python.tar.gz;
    not another dataset's), and how to use one: data.source names it, by its name where the
    folder is launch.data_root (`relative`), which a relative data.source is found in; else by
    its path."""
    # Its dataset's name as the archives write it, without separators: cifar10 (not cifar100),
    # hymenoptera.
    stem = re.match(r"[a-z]+\d*", re.sub(r"[-_]", "", official.lower()))
    key = re.compile(rf"{stem[0] if stem else official}(?!\d)")
    try:
        held = sorted(
            p.name
            for p in folder.iterdir()
            if p.name.lower().endswith((".zip", ".tar.gz", ".tgz", ".tar"))
            and key.search(re.sub(r"[-_]", "", p.name.lower()))
            and not is_hidden(p.name)  # a Mac's ._cifar10-jpeg.zip
            and p.is_file()
        )
    except OSError:
        return ""
    if not held:
        return ""
    # Under DATA_MIRROR, which holds official archives only: this folder as launch.data_root,
    # a machine's setting, as README has it (a path in the committed conf/ would be one's own).
    root = "" if relative else ", and this folder as launch.data_root in conf/local/machine.yaml"
    return (
        f" (it holds {listed(held, 3)}: to train on one, name it in data.source, `data.source:"
        f" {held[0]}` in conf/config.yaml{root}, which `dvc exp run` reads, and `dvc repro` after"
        " `uv run visionpipe params`)"
    )


def _missing(source: str, path: Path, base_dir: Path) -> DownloadError:
    """The error for a local data.source that is not there; where a relative one was looked for."""
    # `$DATA/cifar.zip` with DATA not set where the stage runs stays as written: say that.
    named = re.findall(r"\$\{?([A-Za-z_]\w*)", source)  # $DATA or ${DATA}, as expandvars reads
    unset = [name for name in named if name not in os.environ]
    if unset:
        return DownloadError(
            f"data.source {source!r} names ${unset[0]}, which is not set where the stage runs"
            f" (the environment `dvc exp run` or `dvc repro` started in): export {unset[0]}=..."
            " before it, or give the path itself"
        )
    if paths.user_path(source, "data.source").is_absolute():
        return DownloadError(
            f"data.source {source!r} does not exist: check the path, or copy the data there"
        )
    return DownloadError(
        f"data.source {source!r} resolves to {path}, which does not exist. Relative paths"
        f" are resolved against {base_dir} (launch.data_root, or the project root when that"
        " is null); queued experiments (`dvc exp run --queue`) run in a temporary copy of"
        " the repo, where untracked files are missing: keep the data outside the project and"
        " set launch.data_root (conf/local/machine.yaml) or an absolute data.source."
    )


def _fetch_source(
    source: str, sha256: str | None, dest_dir: Path, base_dir: Path, net: _Net
) -> FetchResult:
    expect = _Expect(
        sha256=_normal_hex(sha256),
        advice="If data.source changed on purpose, update data.sha256 (or set it to null).",
    )
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https"):
        name = urllib.parse.unquote(PurePosixPath(urllib.parse.urlparse(source).path).name)
        if not name:
            raise DownloadError(
                f"data.source {source!r} does not end in a file name: point it at the archive"
                " itself (…/images.zip, …/images.tar.gz)"
            )
        hint = (
            "Check data.source, or download the file yourself and set data.source to the local"
            f" copy, e.g. `uv run dvc exp run -S data.source=/abs/path/{name}`."
        )
        return _download(source, dest_dir / name, expect, [], net, hint)

    path = _local_path(source, base_dir, param="data.source")
    if path.resolve().is_relative_to(dest_dir.resolve()):
        raise DownloadError(
            f"data.source {source!r} lies inside {dest_dir}, which the download stage owns and"
            " empties: keep the original somewhere else and point data.source there"
        )
    if not path.exists():
        raise _missing(source, path, base_dir)
    if path.is_dir() and any(p.lower().endswith(".photoslibrary") for p in path.resolve().parts):
        # Its folders are the library's (originals/, resources/ of smaller copies), no classes.
        raise DownloadError(
            f"data.source {source!r} is (in) a macOS Photos library, whose folders are its own"
            " (originals/, and resources/ of smaller copies of them), not classes: export the"
            " photos into a folder per class (in Photos, an album per class, File > Export) and"
            " point data.source at the folder holding those"
        )
    if path.is_dir():
        # A fixed name: data/raw (and all that follows from it in dvc.lock) then depends on the
        # photos alone, not on what the folder holding them is called on this machine.
        dest = dest_dir / PACKED_FOLDER
        # Hidden and system files come and go without the photos changing (a Mac's Finder
        # writes .DS_Store, a NAS indexes into @eaDir/): leaving them out keeps the tar, its
        # data.sha256 and what DVC re-runs the same on every machine that holds the photos.
        pack_directory(path, dest, store=_read_by_preprocess, leave_out=is_hidden)
        hashes = _hash_file(dest)
        _warn_cache_room(dest, hashes.md5.hexdigest())
        try:
            _verify(hashes, expect, dest.name, str(path))
        except ChecksumError:
            dest.unlink(missing_ok=True)
            raise
        return hashes.result(dest, str(path))
    try:
        # Refused here, naming the user's file, rather than by preprocess, naming its copy.
        check_readable(path)
    except ArchiveReadError as e:
        named = repr(source) if source == str(path) else f"{source!r} ({path})"
        raise DownloadError(f"data.source {named}{str(e).removeprefix(str(path))}") from e
    return _copy(path, dest_dir / path.name, expect, [])


def _warn_cache_room(tar: Path, md5: str) -> None:
    """Warn when DVC's cache has no room for the packed folder: DVC copies each output into it
    when the stage ends (unless its cache.type links, or it already holds those bytes), and
    fails there, the disk full."""
    cache = fsutil.dvc_cache_copied_to(tar.parent)
    if cache is None or (cache / md5[:2] / md5[2:]).is_file():
        return
    size, free = tar.stat().st_size, fsutil.free_bytes(cache)
    if size > free:
        log.warning(
            "%s takes %s, and the disk of DVC's cache (%s) has %s free: DVC copies the tar"
            " there when this stage ends (unless the file system can reflink: btrfs, XFS,"
            " APFS), and will fail for want of space; free some, move the cache (`uv run dvc"
            " cache dir`), or let DVC link instead of copying (`uv run dvc config cache.type"
            " hardlink,symlink`)",
            tar,
            fsutil.size_text(size),
            cache,
            fsutil.size_text(free),
        )


def _read_by_preprocess(names: list[str]) -> list[bool]:
    """Which files of a folder source preprocess reads, and so are packed whole: the images,
    or every file of the official CIFAR-10 python batches. The rest (a phone's videos, RAW
    files) would fill data/raw and DVC's cache for nothing; preprocess lists them from their
    names."""
    if is_cifar_python(names):
        return [True] * len(names)
    return [is_image_name(name) for name in names]  # hidden files were left out already


def _local_path(value: str, base_dir: Path, *, param: str) -> Path:
    """A local path from a plain path or file:// URL; relative ones are taken from base_dir."""
    parsed = urllib.parse.urlparse(value)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(
                f"{param} {value!r}: a file:// URL must name a local path (file:///abs/path),"
                f" not host {parsed.netloc!r}"
            )
        return Path(urllib.request.url2pathname(parsed.path))
    # A scheme is a URL's only when "//" follows (s3://bucket): photos:2024 is a folder's name,
    # and one letter is a Windows drive (C:\data), which user_path explains.
    if len(parsed.scheme) > 1 and value[len(parsed.scheme) + 1 :].startswith("//"):
        raise DownloadError(
            f"{param} {value!r}: unsupported scheme {parsed.scheme!r}. Use a local path,"
            " a file:// URL or an http(s):// URL (fetch other stores yourself, then point to the"
            " local copy)"
        )
    path = paths.user_path(value, param)
    if path.is_absolute():
        return path
    joined = base_dir / path
    return Path(fsutil.unicode_twin(str(joined)) or joined)  # a Mac's folder, typed composed


@dataclass(frozen=True)
class _Net:
    attempts: int
    backoff_s: float
    timeout_s: float


class _Hashes:
    """MD5, SHA-256 and size of a stream, updated chunk by chunk."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.sha256 = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.sha256.update(chunk)
        self.size += len(chunk)

    def consume(self, read: Callable[[int], bytes], *sinks: Callable[[bytes], object]) -> _Hashes:
        """Read `read` to its end in chunks, hashing each one and handing it to every sink."""
        while chunk := read(_CHUNK):
            self.update(chunk)
            for sink in sinks:
                sink(chunk)
        return self

    def result(self, path: Path, origin: str) -> FetchResult:
        return FetchResult(path, origin, self.sha256.hexdigest(), self.md5.hexdigest(), self.size)


def _normal_hex(value: str | None) -> str | None:
    return value.strip().lower() if value else None


def _verify(hashes: _Hashes, expect: _Expect, name: str, origin: str) -> None:
    for algo, wanted, actual in (
        ("md5", expect.md5, hashes.md5.hexdigest()),
        ("sha256", expect.sha256, hashes.sha256.hexdigest()),
    ):
        if wanted is not None and wanted.lower() != actual:
            raise ChecksumError(
                f"checksum mismatch for {name} from {origin}: {algo} expected {wanted.lower()},"
                f" got {actual}; its copy was deleted, the source left as it is. {expect.advice}"
            )


def _copy(src: Path, dest: Path, expect: _Expect, checks: Sequence[Check]) -> FetchResult:
    origin = str(src.absolute())  # as the user named it: not the DVC cache file a link leads to
    hashes = _Hashes()
    with atomic_path(dest) as tmp:
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                hashes.consume(fin.read, fout.write)
        except OSError as e:
            raise DownloadError(f"cannot copy {src} to {dest.parent}: {e}") from e
        _verify(hashes, expect, dest.name, origin)
        for check in checks:
            check(tmp, dest.name)
    return hashes.result(dest, origin)


def _download(
    url: str, dest: Path, expect: _Expect, checks: Sequence[Check], net: _Net, hint: str
) -> FetchResult:
    log.info("downloading %s", url)
    with atomic_path(dest) as tmp:
        hashes = _fetch_with_retries(url, tmp, net, hint)
        _verify(hashes, expect, dest.name, url)
        for check in checks:
            check(tmp, dest.name)
    return hashes.result(dest, url)


def _fetch_with_retries(url: str, tmp: Path, net: _Net, hint: str) -> _Hashes:
    for attempt in range(1, net.attempts + 1):
        last = attempt == net.attempts
        delay = net.backoff_s * 2 ** (attempt - 1)
        try:
            return _fetch_once(url, tmp, net.timeout_s)
        except urllib.error.HTTPError as e:
            if e.code not in _RETRY_STATUS or last:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise NetworkError(
                    f"{url}: HTTP {e.code} {e.reason}{tries}. {hint}".rstrip(), e.code
                ) from e
            retry_after = e.headers.get("Retry-After", "") if e.headers else ""
            if retry_after.isdigit():
                delay = max(delay, min(float(retry_after), _MAX_RETRY_AFTER_S))
            problem = f"HTTP {e.code}"
        except urllib.error.URLError as e:
            # Name-resolution failures (offline, typo in the host) are not worth retrying.
            if not isinstance(e.reason, _TRANSIENT) or last:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise NetworkError(
                    f"cannot download {url}: {e.reason}{tries}. {hint}".rstrip()
                ) from e
            problem = str(e.reason)
        except (http.client.InvalidURL, UnicodeError, ValueError) as e:  # the same each time
            invalid = f"cannot download {url}: not a valid URL ({e}). {hint}"
            raise NetworkError(invalid.rstrip()) from e
        except (*_TRANSIENT, http.client.HTTPException) as e:  # raised mid-body
            if last:
                raise NetworkError(
                    f"cannot download {url}: {type(e).__name__}: {e} after {attempt} attempts."
                    f" {hint}".rstrip()
                ) from e
            problem = f"{type(e).__name__}: {e}"
        log.warning(
            "download of %s failed (%s); retry %d of %d in %.1f s",
            url,
            problem,
            attempt,
            net.attempts - 1,
            delay,
        )
        time.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


# What a URL may hold as it is (RFC 3986's reserved and unreserved characters, and % for the
# escapes already there); anything else, a space or an accent as an address bar shows them, is
# percent-encoded as UTF-8, as browsers send it.
_URL_SAFE = "!#$%&'()*+,/:;=?@[]~"


def _requested(url: str) -> str:
    """`url` as sent: a path or query with spaces or non-ASCII letters percent-encoded (a `%`
    that starts no escape too), a non-ASCII host in punycode. http.client refuses them raw
    ("URL can't contain control characters")."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if not netloc.isascii():
        import idna

        userinfo = netloc.rpartition("@")[0]
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
        host = f"[{host}]" if ":" in host else idna.encode(host, uts46=True).decode("ascii")
        user = urllib.parse.quote(userinfo, safe=":%") + "@" if userinfo else ""
        netloc = user + host + port

    def quote(text: str) -> str:
        return urllib.parse.quote(re.sub("%(?![0-9A-Fa-f]{2})", "%25", text), safe=_URL_SAFE)

    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, quote(parts.path), quote(parts.query), quote(parts.fragment))
    )


def _fetch_once(url: str, tmp: Path, timeout_s: float) -> _Hashes:
    headers = {"User-Agent": f"visionpipe/{__version__}"}
    request = urllib.request.Request(_requested(url), headers=headers)
    hashes = _Hashes()
    with urllib.request.urlopen(request, timeout=timeout_s) as response, open(tmp, "wb") as f:
        length = response.headers.get("Content-Length", "")
        total = int(length) if length.isdigit() else None
        name = PurePosixPath(urllib.parse.urlparse(url).path).name
        with tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=None
        ) as bar:
            hashes.consume(response.read, f.write, lambda chunk: bar.update(len(chunk)))
    if total is not None and hashes.size != total:
        raise http.client.IncompleteRead(b"", total - hashes.size)
    return hashes


def _hash_file(path: Path) -> _Hashes:
    with open(path, "rb") as f:
        return _Hashes().consume(f.read)


def _remove_others(dest_dir: Path, keep: Path) -> None:
    """Leave `keep` as the only archive in dest_dir (and no stale temp files from a crash)."""
    for child in dest_dir.iterdir():
        name = child.name.lower()
        stale = name.startswith(".") and name.endswith(".tmp")
        if child == keep or not child.is_file() or not (name.endswith(ARCHIVE_SUFFIXES) or stale):
            continue
        child.unlink()
        log.info("removed older %s %s", "temp file" if stale else "archive", child)


def _check_layout(dataset: str, path: Path, name: str) -> None:
    """Refuse an official archive whose files per split and class are not the published ones."""
    official = DATASETS[dataset].official
    assert official is not None
    try:
        files = list_files(path)
    except ValueError as e:
        raise DownloadError(f"{name} is not a readable archive ({e}): fetch it again") from e
    counts: Counter[tuple[str, str]] = Counter()
    others: list[str] = []
    for member in files:
        parts = member.split("/")
        if len(parts) == 4 and parts[0] == official.root:
            counts[(parts[1], parts[2])] += 1
        else:
            others.append(member)
    if counts == Counter(official.layout) and not others:
        return

    def show(c: dict[tuple[str, str], int]) -> str:
        return ", ".join(f"{split}/{cls} {n}" for (split, cls), n in sorted(c.items())) or "none"

    extra = f"; plus {len(others)} other files, e.g. {', '.join(others[:3])}" if others else ""
    raise DownloadError(
        f"{name} does not have the official {dataset} layout: expected"
        f" {show(official.layout)} files under {official.root}/, found"
        f" {show(counts)}{extra}. Fetch it again; or, if this copy is what you want, set"
        " data.source to it (the layout check applies to the official archive only)."
    )
