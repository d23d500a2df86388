"""Safe storage of workflow images (DESIGN section 8).

An image is workflow code: one ``.py`` file, or a ``.zip`` / ``.tar.gz`` of a directory. The bytes
come from a client, so registration treats them as hostile: it checks the declared size and
sha256, works out the kind from the bytes themselves, and unpacks into
``<images_dir>/<image_id>/`` without ever importing or running any of it. Anything that could
write outside the image directory, create links or special files, or blow up the disk is refused
with ``ImageRejected`` (a ``BadRequest``), whose message says what to fix.

Everything here is plain blocking filesystem code; an async server calls it in a worker thread.
"""

from __future__ import annotations

import ast
import enum
import gzip
import hashlib
import io
import keyword
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from runtara_core.errors import BadRequest

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"
GZIP_MAGIC = b"\x1f\x8b"
FILE_MODE = 0o644
DIR_MODE = 0o755
_CHUNK = 64 * 1024
_MAX_NAME_COMPONENT_BYTES = 255
_MODULE_FILE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\.py")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_SKIP_DIRS = frozenset({"__pycache__"})
_SKIP_SUFFIXES = (".pyc",)
_KEYWORDS = frozenset(keyword.kwlist)


class ImageRejected(BadRequest):
    """The image bytes are unsafe or unusable; the message says why and what to change."""


class ImageKind(enum.Enum):
    PY_FILE = "py"
    ZIP = "zip"
    TAR_GZ = "tar.gz"


@dataclass(frozen=True)
class UnpackedImage:
    """Where an image landed and what it holds; ``entry_file`` is set only for a ``.py`` image."""

    root: Path
    kind: ImageKind
    files: int
    total_bytes: int
    entry_file: Path | None = None


def _mib(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)} MiB"
    if n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


def detect_kind(filename: str, data: bytes) -> ImageKind:
    """The kind of image ``data`` is, judged by its bytes rather than trusting the name.

    A ``.py`` image is parsed (never executed) so a syntax error is reported at registration,
    with its line number, instead of surfacing later as a failed launch.
    """
    if data.startswith(ZIP_MAGIC):
        return ImageKind.ZIP
    if data.startswith(GZIP_MAGIC):
        return ImageKind.TAR_GZ
    if filename.endswith(".py"):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ImageRejected(
                f"image {filename!r} is not UTF-8 text (invalid byte at offset {exc.start})"
            ) from None
        try:
            ast.parse(data, filename=filename)
        except SyntaxError as exc:
            raise ImageRejected(
                f"image {filename!r} has a syntax error at line {exc.lineno}: {exc.msg}"
            ) from None
        except (ValueError, RecursionError) as exc:
            raise ImageRejected(f"image {filename!r} cannot be parsed as Python: {exc}") from None
        return ImageKind.PY_FILE
    raise ImageRejected(
        f"image {filename!r} is neither a .py file nor a .zip / .tar.gz archive "
        "(send a single .py file or an archive of a directory)"
    )


def check_digest(data: bytes, size_bytes: int, sha256_hex: str) -> None:
    """Refuse bytes that differ from what the client declared (truncated or corrupted upload)."""
    if len(data) != size_bytes:
        raise ImageRejected(
            f"image size mismatch: declared {size_bytes} bytes, received {len(data)} bytes"
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256_hex.strip().lower():
        raise ImageRejected(f"image sha256 mismatch: declared {sha256_hex}, actual {actual}")


# --------------------------------------------------------------------------- archive members


@dataclass(frozen=True)
class _Member:
    """One validated archive entry; ``parts`` is the normalised relative path."""

    parts: tuple[str, ...]
    is_dir: bool
    source: object  # zipfile.ZipInfo or tarfile.TarInfo, for reading the data back


def _safe_parts(raw: str) -> tuple[str, ...]:
    """Split an archive entry name into safe relative components, or refuse it.

    Refuses absolute paths, drive letters, backslashes (on Windows they are separators, so
    ``..\\x`` would escape there), ``..`` anywhere, and control characters including NUL.
    """
    shown = raw.replace("\x00", "\\x00")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise ImageRejected(f"archive entry {shown!r} contains a control character in its name")
    if "\\" in raw:
        raise ImageRejected(
            f"archive entry {shown!r} contains a backslash; use '/' as the path separator"
        )
    if raw.startswith("/") or _DRIVE_RE.match(raw):
        raise ImageRejected(f"archive entry {shown!r} has an absolute path")
    parts = tuple(p for p in raw.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ImageRejected(f"archive entry {shown!r} escapes the image directory")
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > _MAX_NAME_COMPONENT_BYTES:
            raise ImageRejected(f"archive entry {shown!r} has a path component that is too long")
    return parts


def _zip_members(zf: zipfile.ZipFile, max_files: int) -> list[_Member]:
    infos = zf.infolist()
    if len(infos) > max_files:
        raise ImageRejected(
            f"archive has {len(infos)} entries, more than the limit of {max_files} "
            "(RUNTARA_MAX_IMAGE_FILES)"
        )
    members: list[_Member] = []
    for info in infos:
        # zipfile cuts names at the first NUL; orig_filename keeps the name as stored.
        raw = info.orig_filename
        parts = _safe_parts(raw)
        mode = (info.external_attr >> 16) & 0o177777
        ftype = stat.S_IFMT(mode)
        if ftype == stat.S_IFLNK:
            raise ImageRejected(f"archive entry {raw!r} is a symlink; images cannot contain links")
        is_dir = info.is_dir() or ftype == stat.S_IFDIR
        if ftype not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ImageRejected(
                f"archive entry {raw!r} is a special file; only regular files and directories "
                "are allowed"
            )
        if info.flag_bits & 0x1:
            raise ImageRejected(f"archive entry {raw!r} is encrypted; send an unencrypted archive")
        members.append(_Member(parts, is_dir, info))
    return members


def _tar_members(tf: tarfile.TarFile, max_files: int, max_unpacked_bytes: int) -> list[_Member]:
    """Validate tar entries one by one, stopping early so a bomb is not walked to its end.

    A tar member's data follows its header byte for byte, so its declared size is real; checking
    the running total here avoids decompressing gigabytes just to skip over them.
    """
    members: list[_Member] = []
    declared = 0
    while True:
        info = tf.next()
        if info is None:
            break
        if len(members) >= max_files:
            raise ImageRejected(
                f"archive has more than {max_files} entries (RUNTARA_MAX_IMAGE_FILES)"
            )
        raw = info.name
        parts = _safe_parts(raw)
        if info.issym() or info.islnk():
            kind = "symlink" if info.issym() else "hardlink"
            raise ImageRejected(f"archive entry {raw!r} is a {kind}; images cannot contain links")
        if not (info.isreg() or info.isdir()):
            raise ImageRejected(
                f"archive entry {raw!r} is a special file (device, fifo or other); only regular "
                "files and directories are allowed"
            )
        if info.isreg():
            declared += info.size
            if declared > max_unpacked_bytes:
                raise _too_big(max_unpacked_bytes)
        members.append(_Member(parts, info.isdir(), info))
    return members


def _too_big(max_unpacked_bytes: int) -> ImageRejected:
    return ImageRejected(
        f"image unpacks to more than {_mib(max_unpacked_bytes)} (RUNTARA_MAX_IMAGE_BYTES)"
    )


def _check_layout(members: list[_Member]) -> list[_Member]:
    """Refuse duplicates and file/directory clashes; strip one shared top-level directory.

    Archiving ``myflow/`` usually yields ``myflow/fanout.py``; stripping the shared directory
    makes the entrypoint ``fanout:main`` work whether or not the archive had that wrapper.
    """
    if not any(not m.is_dir and m.parts for m in members):
        raise ImageRejected("archive contains no files")
    tops = {m.parts[0] for m in members if m.parts}
    single_dir = len(tops) == 1 and all(m.is_dir or len(m.parts) > 1 for m in members if m.parts)
    if single_dir:
        members = [_Member(m.parts[1:], m.is_dir, m.source) for m in members]
    seen: set[tuple[str, ...]] = set()
    files: set[tuple[str, ...]] = set()
    dirs: set[tuple[str, ...]] = set()
    for m in members:
        if not m.parts:
            continue  # the root itself ("./" or the stripped top-level directory)
        if m.parts in seen:
            raise ImageRejected(f"archive has a duplicate entry {'/'.join(m.parts)!r}")
        seen.add(m.parts)
        (dirs if m.is_dir else files).add(m.parts)
        for i in range(1, len(m.parts)):
            dirs.add(m.parts[:i])
    clash = files & dirs
    if clash:
        name = "/".join(sorted(clash)[0])
        raise ImageRejected(f"archive entry {name!r} is both a file and a directory")
    return [m for m in members if m.parts]


def _open_member(archive: zipfile.ZipFile | tarfile.TarFile, member: _Member) -> BinaryIO:
    if isinstance(archive, zipfile.ZipFile):
        assert isinstance(member.source, zipfile.ZipInfo)
        return archive.open(member.source)  # type: ignore[return-value]
    assert isinstance(member.source, tarfile.TarInfo)
    reader = archive.extractfile(member.source)
    if reader is None:  # pragma: no cover - only for non-regular members, refused earlier
        raise ImageRejected(f"archive entry {member.source.name!r} has no data")
    return reader  # type: ignore[return-value]


def _copy_capped(src: BinaryIO, fd: int, budget: int) -> int:
    """Copy ``src`` into ``fd`` in chunks; return bytes written, refusing to exceed ``budget``.

    Counts the bytes actually produced, not what a header claimed: a zip bomb's headers lie.
    """
    written = 0
    while True:
        chunk = src.read(_CHUNK)
        if not chunk:
            return written
        written += len(chunk)
        if written > budget:
            raise _BudgetExceeded
        view = memoryview(chunk)
        while view:
            n = os.write(fd, view)
            view = view[n:]


class _BudgetExceeded(Exception):
    pass


def _inside(root: Path, target: Path) -> Path:
    """Last line of defence: the resolved target must lie under the resolved root."""
    resolved = target.resolve()
    if not resolved.is_relative_to(root):
        raise ImageRejected(
            f"archive entry {str(target.relative_to(root))!r} escapes the image directory"
        )
    return resolved


def _make_dirs(root: Path, parts: tuple[str, ...]) -> None:
    path = root
    for part in parts:
        path = path / part
        if not path.is_dir():
            _inside(root, path)
            os.mkdir(path, DIR_MODE)
            os.chmod(path, DIR_MODE)  # umask-independent


def _extract(
    archive: zipfile.ZipFile | tarfile.TarFile,
    members: list[_Member],
    root: Path,
    max_unpacked_bytes: int,
) -> tuple[int, int]:
    files = 0
    total = 0
    for m in members:
        if m.is_dir:
            _make_dirs(root, m.parts)
            continue
        _make_dirs(root, m.parts[:-1])
        target = _inside(root, root.joinpath(*m.parts))
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            with _open_member(archive, m) as src:
                try:
                    total += _copy_capped(src, fd, max_unpacked_bytes - total)
                except _BudgetExceeded:
                    raise _too_big(max_unpacked_bytes) from None
        finally:
            os.close(fd)
        files += 1
    return files, total


def _unpack_archive(
    data: bytes, kind: ImageKind, root: Path, max_unpacked_bytes: int, max_files: int
) -> tuple[int, int]:
    try:
        if kind is ImageKind.ZIP:
            with zipfile.ZipFile(io.BytesIO(data)) as zf:
                members = _check_layout(_zip_members(zf, max_files))
                return _extract(zf, members, root, max_unpacked_bytes)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
            members = _check_layout(_tar_members(tf, max_files, max_unpacked_bytes))
            return _extract(tf, members, root, max_unpacked_bytes)
    except ImageRejected:
        raise
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        tarfile.TarError,
        zlib.error,
        EOFError,
    ) as exc:
        raise ImageRejected(f"image archive is corrupt or unreadable: {exc}") from None
    except (NotImplementedError, RuntimeError) as exc:  # unsupported zip compression / encryption
        raise ImageRejected(f"image archive uses an unsupported feature: {exc}") from None
    except gzip.BadGzipFile as exc:
        raise ImageRejected(f"image archive is not a valid gzip stream: {exc}") from None


def unpack_image(
    data: bytes,
    kind: ImageKind,
    destination: Path,
    *,
    filename: str,
    max_unpacked_bytes: int,
    max_files: int,
) -> UnpackedImage:
    """Store an image under ``destination`` (which must not exist yet), all or nothing.

    Everything is written into a temporary sibling directory and renamed into place only when
    complete, so a rejected or failed image leaves nothing behind. Archives get only regular
    files (mode 0644) and directories (0755); links, special files, escaping or duplicate names,
    and anything over ``max_files`` entries (files and directories) or ``max_unpacked_bytes``
    real bytes are refused. If every entry of an archive sits under one top-level directory,
    that directory is stripped, so ``myflow/fanout.py`` is stored as ``fanout.py`` and the
    entrypoint ``fanout:main`` works either way.
    """
    if kind is ImageKind.PY_FILE and not _MODULE_FILE_RE.fullmatch(filename):
        raise ImageRejected(
            f"image file name {filename!r} is not a Python module name: use letters, digits and "
            "underscores, not starting with a digit, ending in .py (for example 'fanout.py')"
        )
    if kind is ImageKind.PY_FILE and filename[:-3] in _KEYWORDS:
        raise ImageRejected(
            f"image file name {filename!r} is a Python keyword and cannot be imported"
        )
    if destination.exists() or destination.is_symlink():
        raise ImageRejected(f"image directory {destination.name!r} already exists")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    )
    try:
        os.chmod(tmp, DIR_MODE)
        root = tmp.resolve()
        entry_file: Path | None = None
        if kind is ImageKind.PY_FILE:
            if len(data) > max_unpacked_bytes:
                raise _too_big(max_unpacked_bytes)
            target = _inside(root, root / filename)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)
                _copy_capped(io.BytesIO(data), fd, max_unpacked_bytes)
            finally:
                os.close(fd)
            files, total = 1, len(data)
            entry_file = destination / filename
        else:
            files, total = _unpack_archive(data, kind, root, max_unpacked_bytes, max_files)
        if destination.exists() or destination.is_symlink():
            raise ImageRejected(f"image directory {destination.name!r} already exists")
        os.rename(tmp, destination)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, ImageRejected):
            log.info("image %s rejected: %s", destination.name, exc.message)
        raise
    log.info("image %s stored: %s, %d files, %d bytes", destination.name, kind.value, files, total)
    return UnpackedImage(
        root=destination, kind=kind, files=files, total_bytes=total, entry_file=entry_file
    )


# --------------------------------------------------------------------------- client side


def _walk_sorted(source: Path) -> Iterator[Path]:
    for child in sorted(source.iterdir(), key=lambda p: p.name):
        if child.is_symlink():
            raise ImageRejected(f"{child} is a symlink; images cannot contain links")
        if child.is_dir():
            if child.name in _SKIP_DIRS:
                continue
            yield child
            yield from _walk_sorted(child)
        elif child.is_file():
            if child.name.endswith(_SKIP_SUFFIXES):
                continue
            yield child
        else:
            raise ImageRejected(f"{child} is not a regular file or directory")


def archive_directory(source: Path) -> bytes:
    """A deterministic ``.tar.gz`` of ``source``'s contents (paths relative to ``source``).

    Entries are sorted, times, owners and modes normalised, and the gzip header's mtime zeroed,
    so the same tree always gives the same bytes (and the same sha256). ``__pycache__`` and
    ``.pyc`` files are left out; links and special files are refused, as the server would.
    """
    if not source.is_dir():
        raise ImageRejected(f"{source} is not a directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in _walk_sorted(source):
            info = tarfile.TarInfo(path.relative_to(source).as_posix())
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path.is_dir():
                info.type = tarfile.DIRTYPE
                info.mode = DIR_MODE
                tf.addfile(info)
            else:
                info.mode = FILE_MODE
                info.size = path.stat().st_size
                with path.open("rb") as fh:
                    tf.addfile(info, fh)
    return gzip.compress(buf.getvalue(), compresslevel=9, mtime=0)
