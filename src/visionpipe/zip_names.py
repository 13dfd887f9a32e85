"""A zip member's name as its maker meant it.

A name without the UTF-8 flag is cp437 by the ZIP standard, but few tools that leave the flag
unset mean cp437: macOS's Archive Utility stores UTF-8, a Windows stores its code page (GBK on a
Chinese one), and WinRAR, Bandizip and Info-ZIP may add the UTF-8 name in an extra field
(Info-ZIP's Unicode Path). A wrong guess turns class folders into garbled class names that every
output then carries, so a doubtful guess is said, with both readings and how to unpack the zip
in the code page it was made in.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import struct
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from visionpipe import paths
from visionpipe.images import is_image_name

log = logging.getLogger("visionpipe.archive")

UTF8_FLAG = 0x800  # general purpose bit 11: the member's name is UTF-8
UNICODE_PATH = 0x7075  # Info-ZIP's extra field: version 1, the stored name's CRC-32, UTF-8 name
# The code pages a garbled name is most likely in: a Windows's (its zip names are in the OEM
# code page), most used first, with the scripts of the letters each holds. A reading of letters
# of its page's scripts only is shown (GBK and Korean's cp949 both read most two-byte names as
# CJK ideographs: which is right, only a reader can tell), never trusted.
CODE_PAGES = {
    "gbk": ("CJK", "IDEOGRAPHIC"),
    "shift_jis": ("CJK", "IDEOGRAPHIC", "HIRAGANA", "KATAKANA"),
    "cp949": ("HANGUL", "CJK"),
    "big5": ("CJK", "IDEOGRAPHIC"),
    "cp850": ("LATIN",),  # Western Europe's: ø, Á, ã, Õ, which cp437 lacks
    "cp866": ("CYRILLIC",),
    # The ANSI code pages, which some zip tools write, then Central Europe's (ł, ś, č, ő).
    "cp1251": ("CYRILLIC",),
    "cp1252": ("LATIN",),
    "cp852": ("LATIN",),
}

LETTER = re.compile(r"[^\W\d_]")  # a letter of any script: a word character but a digit or _


class ZipNames:
    """Reads the names of one zip's members in one encoding, decided for the whole zip: a
    Chinese Windows's GBK name can be valid UTF-8 by chance (猫 is C3 A8, UTF-8's è), and names
    read one by one would split one folder, one class, in two."""

    def __init__(self, source: Path, infos: list[zipfile.ZipInfo]) -> None:
        self.source = source
        self.utf8 = _unflagged_names_are_utf8(infos)
        # Every folder, ASCII ones too: an alphabet's a/ b/ beside ñ/ tells ñ is a letter. Read
        # as _doubtful reads the names it doubts (UTF-8), so a folder above them matches.
        self.folders = {
            "/".join(parts[: i + 1])
            for parts in (_as_utf8(info).split("/") for info in infos)
            for i in range(len(parts) - 1)
        }
        self.cp437: list[bytes] = []  # stored names read as cp437
        self.guessed: list[bytes] = []  # unflagged names read as UTF-8

    def name(self, info: zipfile.ZipInfo) -> str:
        if not _unflagged(info):
            return info.filename
        raw = info.orig_filename.encode("cp437")  # the bytes as stored
        if (unicode_path := _unicode_path(info.extra, raw)) is not None:
            return unicode_path  # its backslashes as the zip's own system reads them (clean_name)
        if self.utf8:
            try:
                name = raw.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                self.guessed.append(raw)
                return name
        self.cp437.append(raw)
        return info.filename

    def warn(self) -> None:
        """A warning where the names read may not be the ones meant."""
        if self.cp437 and not _latin_as_read(self.cp437):
            read = self.cp437[0].decode("cp437")
            log.warning(
                "%s holds file names not marked UTF-8 that are not all UTF-8 either: %d (such"
                " as %r) are read as the ZIP standard's cp437, garbled if the zip was made on a"
                " system with another code page%s",
                *(self.source, len(self.cp437), read, _other_reading(self.source, self.cp437)),
            )
        elif (doubt := _doubtful(self.guessed, self.folders)) is not None:
            # The other reading shown is of a name holding the part named.
            named = sorted(self.guessed, key=lambda raw: doubt[0] not in raw.decode("utf-8"))
            log.warning(
                "%s holds file names not marked UTF-8, read as UTF-8, of which %r %s%s",
                *(self.source, *doubt, _other_reading(self.source, named)),
            )


def _as_utf8(info: zipfile.ZipInfo) -> str:
    """A member's name, an unflagged one's stored bytes read as UTF-8 where they are UTF-8."""
    if not _unflagged(info):
        return info.filename
    try:
        return info.orig_filename.encode("cp437").decode("utf-8")
    except UnicodeDecodeError:
        return info.filename


def _unflagged(info: zipfile.ZipInfo) -> bool:
    """Whether a member's name is non-ASCII with no UTF-8 flag: its encoding is a guess."""
    return not info.flag_bits & UTF8_FLAG and not info.orig_filename.isascii()


def _unflagged_names_are_utf8(infos: list[zipfile.ZipInfo]) -> bool:
    """Whether a zip's unflagged non-ASCII names are UTF-8: those of all its images are valid
    UTF-8. Other files' names do not count: one stray name of another system (a Latin-1 notes
    file) must not garble a Mac's zip, and is read as cp437 alone."""
    for info in filter(_unflagged, infos):
        if not is_image_name(info.filename):
            continue
        try:
            info.orig_filename.encode("cp437").decode("utf-8")
        except UnicodeDecodeError:
            return False
    return True


def _unicode_path(extra: bytes, raw: bytes) -> str | None:
    """The UTF-8 name of Info-ZIP's Unicode Path field in `extra`, if it is there and was
    written for the stored name `raw` (its CRC-32 matches: a tool that renamed the member
    without updating the field left a stale one)."""
    at = 0
    while at + 4 <= len(extra):
        kind, size = struct.unpack_from("<HH", extra, at)
        data = extra[at + 4 : at + 4 + size]
        at += 4 + size
        if kind != UNICODE_PATH or len(data) < 5 or data[0] != 1:
            continue
        if struct.unpack_from("<I", data, 1)[0] != zlib.crc32(raw):
            return None
        try:
            return data[5:].decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _doubtful(names: list[bytes], folders: set[str]) -> tuple[str, str] | None:
    """A part of `names` (read as UTF-8) that reads as Chinese, Japanese or Korean in GBK,
    Big5 or Shift-JIS does read as UTF-8, and why; else None. Two bytes of those read as one
    letter of some script each: a run of such letters mixes scripts (小猫 reads Сè), where a
    real word keeps to one (café, Київ, 5µm_Ø); folders named with one character each (猫, 牛,
    鸭: classes) read as lone letters of several scripts."""
    parts = sorted({p for raw in names for p in raw.decode("utf-8").split("/") if not p.isascii()})
    for part in parts:
        for run in re.findall(r"[^\x00-\x7f]+", part):
            scripts = {s for c in run if (s := _script(c)) is not None}
            if len(scripts) > 1:
                return part, f"mixes scripts ({', '.join(sorted(scripts))}) in one word"
    # Folders of one letter each, of several scripts: 猫, 牛, 鸭 read è, ţ, Ѽ (an alphabet's
    # classes, А/ Б/ В/, keep to one).
    lone = [p for p in parts if len(p) == 1 and _script(p) is not None]
    scripts = {_script(p) for p in lone}
    if len(scripts) > 1:
        names = ", ".join(sorted(s for s in scripts if s))
        return lone[0], f"and {len(lone) - 1} more are folders of one letter each, of {names}"
    # A Chinese class of one character (猫/, 01_猫/) whose GBK bytes read as one letter (è):
    # one such folder, or several with a letter past Latin-1 (牛 reads ţ). A Swedish å/ ä/ ö/, an
    # alphabet's (ñ/ beside a/ b/, α/ β/ γ/, А/ Б/ В/) and a letter of no script (º, µ) are
    # letters indeed.
    lone = sorted({(folder, p) for raw in names for folder, p in _one_letter_parts(raw)})
    letters = {c for _, p in lone for c in LETTER.findall(p) if _script(c) is not None}
    chinese = bool(letters) and all(_common_char(_as_gbk(c), "gbk") for c in letters)
    if (
        chinese
        and not _alphabet(lone, letters, folders)
        and (len(letters) == 1 or any(ord(c) > 0xFF for c in letters))
    ):
        part = lone[0][1]
        return part, f"is a name of one letter, which GBK reads {_as_gbk(part)}"
    return None


def _one_letter_parts(raw: bytes) -> Iterator[tuple[str, str]]:
    """(the folder it is in, the part) for each part of name `raw` past ASCII of one letter."""
    parts = raw.decode("utf-8").split("/")
    for i, part in enumerate(parts):
        if not part.isascii() and len(LETTER.findall(part)) == 1:
            yield "/".join(parts[:i]), part


def _alphabet(lone: list[tuple[str, str]], letters: set[str], folders: set[str]) -> bool:
    """Whether folders named with one letter each are an alphabet's classes: each beside a
    folder named with one ASCII letter (a/ b/ ... ñ/), or three letters in a row of the
    alphabet (α/ β/ γ/, а/ б/ в/). A Chinese zip's one-character classes, read as lone letters,
    are neither (山/ 石/ 木/ read ľ ɽ ʯ)."""
    split = [f.rpartition("/") for f in folders]
    beside = {
        place for place, _, name in split if len(name) == 1 and name.isascii() and name.isalpha()
    }
    if all(folder in beside for folder, _ in lone):
        return True
    points = {ord(c) for c in letters}
    return any(p + 1 in points and p + 2 in points for p in points)


def _as_gbk(name: str) -> str:
    return name.encode("utf-8").decode("gbk", errors="replace")


def _in_scripts(text: str, scripts: tuple[str, ...]) -> bool:
    """Whether every character of `text` past ASCII is a letter of `scripts` (by the first word
    of its Unicode name: KATAKANA for ー too) or a digit, nothing a symbol or a mark of
    punctuation (cp437's reading of a code page's bytes has box-drawing and math signs among its
    letters, ╒ ╞ ≈ ³; Shift-JIS's of a Spanish camión a half-width ｢), but for the katakana
    middle dot of Japanese names (ラーメン・餃子)."""
    for c in text:
        if c.isascii() or c == "\u30fb" or _cjk_punctuation(c, scripts):
            continue
        kind = unicodedata.category(c)
        if kind == "Nd":
            continue
        if kind[0] != "L" or re.split(r"[ -]", unicodedata.name(c, "?"))[0] not in scripts:
            return False
    return True


def _cjk_punctuation(c: str, scripts: tuple[str, ...]) -> bool:
    """Whether `c` is the punctuation a CJK name holds (【1】, （1）, 、): CJK symbols and
    punctuation, or a full-width form; not a half-width one (Shift-JIS's reading of a Spanish
    camión's ó)."""
    return "CJK" in scripts and ("\u3000" <= c <= "\u303f" or "\uff01" <= c <= "\uff5e")


def _common(text: str, page: str) -> bool:
    """Whether `text` reads as names in code page `page` do, not as a Western name's accented
    letters do, each read with the ASCII letter after it as one character (Bär as B꼛 in
    Korean's cp949, château as chフeau in Shift-JIS): no such character touches a lower-case
    ASCII letter (Tシャツ and IMG_猫 do occur; chフeau does not), none is one of the page's
    rare ones, and no Cyrillic word holds ASCII letters."""
    if "LATIN" in CODE_PAGES[page]:
        return True
    if CODE_PAGES[page] == ("CYRILLIC",):
        words = re.findall(rf"{LETTER.pattern}+", text)
        return not any(not w.isascii() and any(c.isascii() for c in w) for w in words)
    if re.search(r"[a-z][^\x00-\x7f]|[^\x00-\x7f][a-z]", text):
        return False
    # Most of its letters common ones (a name may hold a rare character, 喆, 똠): a Western
    # name's few accented letters read as rare ones, or as punctuation alone.
    letters = [c for c in text if unicodedata.category(c)[0] == "L" and not c.isascii()]
    return 2 * sum(_common_char(c, page) for c in letters) > len(letters)


def _common_char(c: str, page: str) -> bool:
    """Whether `c` is one of the characters most names in `page` are made of: GB2312's in GBK,
    KS X 1001's in cp949 (bytes B0-FD, A1-FE), JIS level 1 and kana in Shift-JIS."""
    if page == "gbk":
        try:
            c.encode("gb2312")
        except UnicodeEncodeError:
            return False
        return True
    raw = c.encode(page)
    if page == "cp949":
        return len(raw) == 2 and raw[0] >= 0xA1 and raw[1] >= 0xA1
    if page == "shift_jis":
        return len(raw) == 2 and int.from_bytes(raw, "big") < 0x989F  # level 2 from here
    if page == "big5":
        return len(raw) == 2 and 0xA440 <= int.from_bytes(raw, "big") < 0xC67F  # frequent ones
    return True


def _latin_as_read(names: list[bytes]) -> bool:
    """Whether cp437's reading of `names` is Latin letters that no other code page reads as its
    own language: a German Windows's Bär (the same bytes in cp437); not a Japanese Windows's
    ネコ, which cp437 reads âlâR, Latin letters too."""
    if not all(_in_scripts(raw.decode("cp437"), ("LATIN",)) for raw in names):
        return False
    others = (page for page, scripts in CODE_PAGES.items() if "LATIN" not in scripts)
    return all(_read_as(names, page) is None for page in others)


# The scripts whose letters two bytes of UTF-8 hold (U+0080 to U+07FF), by the first word of
# their names; other letters there (º, µ, modifier letters such as Ukrainian's ʼ) are no script's.
TWO_BYTE_SCRIPTS = frozenset(
    {"LATIN", "GREEK", "COPTIC", "CYRILLIC", "ARMENIAN", "HEBREW", "ARABIC", "SYRIAC", "THAANA"}
    | {"NKO"}
)


def _script(c: str) -> str | None:
    if not 0x80 <= ord(c) < 0x800 or unicodedata.category(c) not in ("Lu", "Ll", "Lo"):
        return None
    word = unicodedata.name(c, "?").split()[0]
    return word if word in TWO_BYTE_SCRIPTS else None


def _other_reading(source: Path, names: list[bytes]) -> str:
    """The names in each code page that reads them all as letters of its scripts, with the
    command that unpacks the zip in the first; or the plain advice where none does."""
    # A reading that is the name as read already (cp850's of a Japanese name is cp437's) adds
    # nothing.
    as_read = {names[0].decode("cp437"), names[0].decode("utf-8", "replace")}
    readings = [
        (page, r)
        for page in CODE_PAGES
        if (r := _read_as(names, page)) is not None and r not in as_read
    ]
    if not readings:
        return (
            ": unpack it with its maker's code page and set data.source to the folder, or"
            " re-create the zip with names marked UTF-8 (7-Zip with -mcu=on)"
        )
    page = readings[0][0]
    shown = ", ".join(f"{r!r} in {p}" for p, r in readings)
    other = f" (with the right one's code page in place of {page})" if len(readings) > 1 else ""
    folder = _beside_project() / (source.stem + "-unpacked")
    # JSON's strings are Python's: in double quotes, the shell's single ones stay plain.
    opened = f"zipfile.ZipFile({_quoted(_outside_copy(source))}, metadata_encoding={_quoted(page)})"
    code = f"import zipfile; {opened}.extractall({_quoted(folder)})"
    if any("\\" in raw.decode(page, "replace") for raw in names):
        # Windows' separator (a zip PowerShell or .NET made), which extractall keeps in the
        # names here: one file named 照片\狗\1.jpg, not its folders.
        code = (
            f"import zipfile; z = {opened}; m = z.infolist(); "
            '[setattr(i, "filename", i.filename.replace(chr(92), "/")) for i in m]; '
            f"z.extractall({_quoted(folder)}, m)"
        )
    return (
        f"; in its maker's Windows code page the first may read {shown}. If one is right,"
        f" unpack it so, `uv run python -c {shlex.quote(code)}`{other}, and set data.source to"
        f" {str(folder)!r}; or re-create the zip with names marked UTF-8 (7-Zip with -mcu=on)"
    )


def _read_as(names: list[bytes], page: str) -> str | None:
    """The first of `names` in code page `page`, if `page` reads them all as its letters."""
    try:
        readings = [raw.decode(page) for raw in names]
    except UnicodeDecodeError:
        return None
    ok = all(_in_scripts(r, CODE_PAGES[page]) and _common(r, page) for r in readings)
    return readings[0] if ok else None


def _outside_copy(source: Path) -> Path:
    """`source`, absolute, outside a queued run's temporary copy (.dvc/tmp/exps/tmpXXXX/), which
    is gone once the run ends: the run's data.source where it is a local file, else the zip
    at the same place in the project (the workspace's data/raw/ may hold another run's)."""
    posix = source.resolve().as_posix()
    if paths.QUEUED_COPY not in posix:
        return Path(posix)
    if (origin := _local_source()) is not None:
        return origin
    project, inside = posix.split(paths.QUEUED_COPY, 1)
    return Path(project, *inside.split("/")[1:])  # past the copy's own folder


def _local_source() -> Path | None:
    """This run's data.source, if it is a file here (a queued run's is absolute)."""
    from visionpipe.config import ConfigError, load_section
    from visionpipe.config.data import DataConfig
    from visionpipe.paths import user_path

    try:
        source = load_section("data", DataConfig).source
        path = user_path(source, "data.source") if source and "://" not in source else None
    except (ConfigError, OSError, ValueError):  # the advice falls back, never fails the stage
        return None
    return path if path is not None and path.is_absolute() and path.is_file() else None


def _beside_project() -> Path:
    """The folder the project is in, absolute, as data.source must be for queued runs: theirs
    (a temporary copy in .dvc/tmp/exps/) is the one it was copied from, not the copy's."""
    return Path(Path.cwd().resolve().as_posix().split(paths.QUEUED_COPY, 1)[0]).parent


def _quoted(text: object) -> str:
    return json.dumps(str(text), ensure_ascii=False)
