"""Safe storage of workflow images: hostile archives are refused and leave nothing behind."""

from __future__ import annotations

import gzip
import hashlib
import io
import stat
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest

from runtara_core.errors import BadRequest, ErrorCode
from runtara_environment.image_archive import (
    ImageKind,
    ImageRejected,
    UnpackedImage,
    archive_directory,
    check_digest,
    detect_kind,
    unpack_image,
)

MAX_BYTES = 64 * 1024
MAX_FILES = 50

TREE = {
    "fanout.py": (
        b"from helpers import twice\nfrom pkg.sub import VALUE\n\n"
        b"def main(x):\n    return twice(x) + VALUE\n"
    ),
    "helpers.py": b"def twice(x):\n    return 2 * x\n",
    "pkg/__init__.py": b"",
    "pkg/sub.py": b"VALUE = 1\n",
}


# --------------------------------------------------------------------------- builders


def make_zip(
    entries: list[tuple[str, bytes]] | dict[str, bytes], *, attrs: dict[str, int] | None = None
) -> bytes:
    buf = io.BytesIO()
    items = entries.items() if isinstance(entries, dict) else entries
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate-name warnings are the point of some tests
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in items:
                info = zipfile.ZipInfo(name)
                info.compress_type = zipfile.ZIP_DEFLATED
                if attrs and name in attrs:
                    info.external_attr = attrs[name] << 16
                elif name.endswith("/"):
                    info.external_attr = (stat.S_IFDIR | 0o755) << 16
                else:
                    info.external_attr = (stat.S_IFREG | 0o644) << 16
                zf.writestr(info, data)
    return buf.getvalue()


def tar_info(
    name: str,
    *,
    type_: bytes = tarfile.REGTYPE,
    size: int = 0,
    mode: int = 0o644,
    linkname: str = "",
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.size = size
    info.mode = mode
    info.linkname = linkname
    return info


def make_tgz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def tgz_files(files: dict[str, bytes], *, mode: int = 0o644) -> bytes:
    return make_tgz([(tar_info(name, mode=mode), data) for name, data in files.items()])


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    d = tmp_path / "images"
    d.mkdir()
    return d


def unpack(
    data: bytes,
    dest: Path,
    *,
    filename: str = "image.zip",
    kind: ImageKind | None = None,
    max_bytes: int = MAX_BYTES,
    max_files: int = MAX_FILES,
) -> UnpackedImage:
    return unpack_image(
        data,
        kind or detect_kind(filename, data),
        dest,
        filename=filename,
        max_unpacked_bytes=max_bytes,
        max_files=max_files,
    )


def assert_rejected(
    images: Path, data: bytes, match: str, *, filename: str = "image.zip", **kw: int
) -> ImageRejected:
    dest = images / "img"
    with pytest.raises(ImageRejected, match=match) as caught:
        unpack(data, dest, filename=filename, **kw)
    assert list(images.iterdir()) == [], "a rejected image must leave nothing behind"
    return caught.value


def files_under(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- detect_kind / digest


def test_error_type_is_a_bad_request() -> None:
    err = ImageRejected("nope")
    assert isinstance(err, BadRequest)
    assert err.code is ErrorCode.BAD_REQUEST
    assert err.message == "nope"


def test_detect_kind_by_magic_bytes_not_name() -> None:
    assert detect_kind("x.zip", make_zip({"a.py": b""})) is ImageKind.ZIP
    assert detect_kind("x.py", make_zip({"a.py": b""})) is ImageKind.ZIP
    assert detect_kind("x.tar.gz", tgz_files({"a.py": b""})) is ImageKind.TAR_GZ
    assert detect_kind("x.tgz", tgz_files({"a.py": b""})) is ImageKind.TAR_GZ
    assert detect_kind("flow.py", b"def main(x):\n    return x\n") is ImageKind.PY_FILE


def test_detect_kind_reports_syntax_error_with_line_number() -> None:
    with pytest.raises(ImageRejected, match=r"syntax error at line 3"):
        detect_kind("flow.py", b"import os\n\ndef main(:\n    pass\n")


def test_detect_kind_refuses_non_utf8_and_nul_and_unknown() -> None:
    with pytest.raises(ImageRejected, match="not UTF-8"):
        detect_kind("flow.py", b"x = '\xff\xfe'\n")
    with pytest.raises(ImageRejected, match="flow.py"):
        detect_kind("flow.py", b"x = 1\x00\n")
    with pytest.raises(ImageRejected, match=r"neither a \.py file nor"):
        detect_kind("flow.txt", b"x = 1\n")
    with pytest.raises(ImageRejected, match=r"neither a \.py file nor"):
        detect_kind("flow.zip", b"not really a zip")


def test_check_digest() -> None:
    data = b"hello image"
    sha = hashlib.sha256(data).hexdigest()
    check_digest(data, len(data), sha)
    check_digest(data, len(data), sha.upper())
    with pytest.raises(ImageRejected, match=r"size mismatch: declared 5 bytes, received 11 bytes"):
        check_digest(data, 5, sha)
    with pytest.raises(ImageRejected, match=rf"sha256 mismatch: declared {'0' * 64}, actual {sha}"):
        check_digest(data, len(data), "0" * 64)


# --------------------------------------------------------------------------- .py images


def test_py_file_happy_path(images: Path) -> None:
    src = b"def main(x):\n    return x\n"
    dest = images / "img"
    result = unpack(src, dest, filename="fanout.py")
    assert result == UnpackedImage(
        root=dest,
        kind=ImageKind.PY_FILE,
        files=1,
        total_bytes=len(src),
        entry_file=dest / "fanout.py",
    )
    assert (dest / "fanout.py").read_bytes() == src
    assert stat.S_IMODE((dest / "fanout.py").stat().st_mode) == 0o644
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert [p.name for p in images.iterdir()] == ["img"]


@pytest.mark.parametrize(
    "name",
    ["my-flow.py", "1flow.py", "class.py", "../x.py", "dir/x.py", "flow.PY", ".py", "fl ow.py"],
)
def test_py_file_bad_module_name(images: Path, name: str) -> None:
    assert_rejected(
        images, b"x = 1\n", "module name|keyword", filename=name, kind=ImageKind.PY_FILE
    )


def test_py_file_over_size_cap(images: Path) -> None:
    assert_rejected(
        images, b"x = 1\n" * 100, r"more than 64 bytes", filename="big.py", max_bytes=64
    )


def test_destination_already_exists(images: Path) -> None:
    dest = images / "img"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(ImageRejected, match="already exists"):
        unpack(b"x = 1\n", dest, filename="flow.py")
    assert [p.name for p in images.iterdir()] == ["img"]
    assert files_under(dest) == {"keep.txt": b"mine"}


def test_missing_images_dir_is_created(tmp_path: Path) -> None:
    dest = tmp_path / "data" / "images" / "img"
    unpack(b"x = 1\n", dest, filename="flow.py")
    assert (dest / "flow.py").is_file()


# --------------------------------------------------------------------------- happy archives


@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_single_top_level_dir_is_stripped(images: Path, fmt: str) -> None:
    wrapped = {f"myflow/{k}": v for k, v in TREE.items()}
    if fmt == "zip":
        data = make_zip([("myflow/", b""), ("myflow/pkg/", b""), *wrapped.items()])
    else:
        data = make_tgz(
            [(tar_info("myflow", type_=tarfile.DIRTYPE, mode=0o755), None)]
            + [(tar_info(k), v) for k, v in wrapped.items()]
        )
    dest = images / "img"
    result = unpack(data, dest, filename=f"myflow.{fmt}")
    assert files_under(dest) == TREE
    assert result.files == 4
    assert result.total_bytes == sum(len(v) for v in TREE.values())
    assert result.entry_file is None
    assert result.kind is (ImageKind.ZIP if fmt == "zip" else ImageKind.TAR_GZ)


@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_several_top_level_entries_are_kept(images: Path, fmt: str) -> None:
    data = make_zip(TREE) if fmt == "zip" else tgz_files(TREE)
    dest = images / "img"
    unpack(data, dest)
    assert files_under(dest) == TREE


def test_single_top_level_file_is_not_stripped(images: Path) -> None:
    dest = images / "img"
    unpack(make_zip({"fanout.py": b"x = 1\n"}), dest)
    assert files_under(dest) == {"fanout.py": b"x = 1\n"}


def test_two_top_level_dirs_are_not_stripped(images: Path) -> None:
    dest = images / "img"
    unpack(tgz_files({"a/x.py": b"1", "b/y.py": b"2"}), dest)
    assert files_under(dest) == {"a/x.py": b"1", "b/y.py": b"2"}


def test_dot_slash_prefix_is_fine(images: Path) -> None:
    dest = images / "img"
    data = make_tgz(
        [
            (tar_info(".", type_=tarfile.DIRTYPE), None),
            (tar_info("./fanout.py"), b"x = 1\n"),
            (tar_info("./pkg/sub.py"), b"y = 2\n"),
        ]
    )
    unpack(data, dest)
    assert files_under(dest) == {"fanout.py": b"x = 1\n", "pkg/sub.py": b"y = 2\n"}


def test_modes_are_sanitized_tar(images: Path) -> None:
    data = make_tgz(
        [
            (tar_info("d", type_=tarfile.DIRTYPE, mode=0o777), None),
            (tar_info("d/run.py", mode=0o4777), b"x = 1\n"),
            (tar_info("other.py", mode=0o2755), b"y = 1\n"),
        ]
    )
    dest = images / "img"
    unpack(data, dest)
    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "d" / "run.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "other.py").stat().st_mode) == 0o644


def test_modes_are_sanitized_zip(images: Path) -> None:
    data = make_zip(
        {"pkg/": b"", "pkg/run.py": b"x = 1\n", "top.py": b""},
        attrs={"pkg/": stat.S_IFDIR | 0o777, "pkg/run.py": stat.S_IFREG | 0o6777, "top.py": 0},
    )
    dest = images / "img"
    unpack(data, dest)
    assert stat.S_IMODE((dest / "pkg").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "pkg" / "run.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((dest / "top.py").stat().st_mode) == 0o644


# --------------------------------------------------------------------------- hostile names


TRAVERSAL = [
    ("../x", "escapes the image directory"),
    ("a/../../x", "escapes the image directory"),
    ("a/../b", "escapes the image directory"),
    ("/etc/x", "absolute path"),
    ("C:\\x", "backslash"),
    ("C:/x", "absolute path"),
    ("..\\x", "backslash"),
    ("a\\..\\..\\x", "backslash"),
    ("a/b\nc.py", "control character"),
]


@pytest.mark.parametrize(("name", "match"), TRAVERSAL)
def test_zip_hostile_names(images: Path, name: str, match: str) -> None:
    err = assert_rejected(images, make_zip({"ok.py": b"", name: b"pwned"}), match)
    assert "archive entry" in err.message


@pytest.mark.parametrize(("name", "match"), TRAVERSAL)
def test_tar_hostile_names(images: Path, name: str, match: str) -> None:
    assert_rejected(images, tgz_files({"ok.py": b"", name: b"pwned"}), match)


def test_traversal_message_names_the_entry(images: Path) -> None:
    err = assert_rejected(images, tgz_files({"../../etc/passwd": b"root"}), "escapes")
    assert err.message == "archive entry '../../etc/passwd' escapes the image directory"
    assert not (images.parent / "etc").exists()


def test_zip_nul_in_name(images: Path) -> None:
    data = make_zip({"evilXname.py": b"x"})
    assert data.count(b"evilXname.py") == 2  # local header + central directory
    data = data.replace(b"evilXname.py", b"evil\x00name.py")
    assert_rejected(images, data, "control character")


def test_tar_pax_nul_in_name(images: Path) -> None:
    info = tar_info("placeholder.py")
    info.pax_headers = {"path": "evil\x00name.py"}
    data = make_tgz([(tar_info("ok.py"), b""), (info, b"x")])
    assert_rejected(images, data, "control character")


def test_tar_ustar_nul_in_name_is_truncated_harmlessly(images: Path) -> None:
    data = gzip.decompress(tgz_files({"evilXname.py": b"x"}))
    # ustar header: name at 0..100, checksum at 148..156 computed with the checksum field as spaces
    header = bytearray(data[:512])
    header[4] = 0  # "evil\0name.py": tarfile cuts at NUL, so this ends up as plain "evil"
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    data = bytes(header) + data[512:]
    # Python's tarfile truncates at NUL itself; the result must still be a harmless name
    dest = images / "img"
    unpack(gzip.compress(data), dest)
    assert files_under(dest) == {"evil": b"x"}


# --------------------------------------------------------------------------- links and special files


def test_zip_symlink_entry(images: Path) -> None:
    data = make_zip({"ok.py": b"", "link": b"/etc/passwd"}, attrs={"link": stat.S_IFLNK | 0o777})
    assert_rejected(images, data, "'link' is a symlink")


@pytest.mark.parametrize("ftype", [stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK])
def test_zip_special_file_entry(images: Path, ftype: int) -> None:
    data = make_zip({"ok.py": b"", "dev": b""}, attrs={"dev": ftype | 0o644})
    assert_rejected(images, data, "special file")


def test_tar_symlink_entry(images: Path) -> None:
    data = make_tgz(
        [
            (tar_info("ok.py"), b""),
            (tar_info("link", type_=tarfile.SYMTYPE, linkname="/etc/passwd"), None),
        ]
    )
    assert_rejected(images, data, "'link' is a symlink")


def test_tar_symlink_then_write_through_it(images: Path) -> None:
    data = make_tgz(
        [(tar_info("d", type_=tarfile.SYMTYPE, linkname="/tmp"), None), (tar_info("d/x.py"), b"x")]
    )
    assert_rejected(images, data, "symlink")


def test_tar_hardlink_entry(images: Path) -> None:
    data = make_tgz(
        [
            (tar_info("ok.py"), b""),
            (tar_info("hard", type_=tarfile.LNKTYPE, linkname="ok.py"), None),
        ]
    )
    assert_rejected(images, data, "'hard' is a hardlink")


@pytest.mark.parametrize("type_", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_tar_device_and_fifo_entries(images: Path, type_: bytes) -> None:
    data = make_tgz([(tar_info("ok.py"), b""), (tar_info("dev", type_=type_), None)])
    assert_rejected(images, data, "special file")


# --------------------------------------------------------------------------- counts and sizes


def test_zip_bomb_stops_at_cap(images: Path) -> None:
    data = make_zip({"bomb.bin": b"\x00" * (1024 * 1024)})
    assert len(data) < 4096  # highly compressible: tiny on the wire
    assert_rejected(images, data, r"more than 64 KiB \(RUNTARA_MAX_IMAGE_BYTES\)")


def test_zip_bomb_with_lying_header(images: Path) -> None:
    real = 1024 * 1024
    data = make_zip({"bomb.bin": b"\x00" * real})
    lie = struct.pack("<I", 1000)
    assert data.count(struct.pack("<I", real)) == 2
    data = data.replace(struct.pack("<I", real), lie)
    # headers now claim 1000 bytes; the inflater must not be trusted to stop there
    assert_rejected(images, data, "corrupt|more than")


def test_many_small_files_add_up_past_cap(images: Path) -> None:
    files = {f"f{i}.py": b"#" * 10_000 for i in range(10)}
    assert_rejected(images, make_zip(files), "more than 64 KiB")
    assert_rejected(images, tgz_files(files), "more than 64 KiB")


def test_tar_bomb_stops_at_cap(images: Path) -> None:
    data = tgz_files({"bomb.bin": b"\x00" * (1024 * 1024)})
    assert_rejected(images, data, r"more than 64 KiB")


def test_exactly_at_cap_is_fine(images: Path) -> None:
    dest = images / "img"
    result = unpack(make_zip({"a.bin": b"a" * 1000, "b.bin": b"b" * 24}), dest, max_bytes=1024)
    assert result.total_bytes == 1024


@pytest.mark.parametrize("fmt", ["zip", "tgz"])
def test_too_many_files(images: Path, fmt: str) -> None:
    files = {f"m{i}.py": b"" for i in range(MAX_FILES + 1)}
    data = make_zip(files) if fmt == "zip" else tgz_files(files)
    assert_rejected(images, data, r"RUNTARA_MAX_IMAGE_FILES")
    dest = images / "img"
    unpack(data, dest, max_files=MAX_FILES + 1)
    assert len(files_under(dest)) == MAX_FILES + 1


def test_zip_duplicate_names(images: Path) -> None:
    data = make_zip([("a.py", b"1"), ("b.py", b""), ("a.py", b"2")])
    assert_rejected(images, data, "duplicate entry 'a.py'")


def test_tar_duplicate_names(images: Path) -> None:
    data = make_tgz([(tar_info("a.py"), b"1"), (tar_info("b.py"), b""), (tar_info("./a.py"), b"2")])
    assert_rejected(images, data, "duplicate entry 'a.py'")


def test_file_and_directory_clash(images: Path) -> None:
    assert_rejected(images, tgz_files({"a": b"1", "a/b.py": b"2"}), "both a file and a directory")


def test_archive_without_files(images: Path) -> None:
    data = make_tgz([(tar_info("only", type_=tarfile.DIRTYPE), None)])
    assert_rejected(images, data, "no files")


@pytest.mark.parametrize(
    "data",
    [b"PK\x03\x04garbage", gzip.compress(b"not a tar at all" * 10, mtime=0), b"\x1f\x8bjunk"],
    ids=["zip-garbage", "gzip-not-tar", "gzip-junk"],
)
def test_corrupt_archives(images: Path, data: bytes) -> None:
    assert_rejected(images, data, "corrupt|not a valid gzip|no files")


def test_encrypted_zip_entry(images: Path) -> None:
    data = bytearray(make_zip({"a.py": b"x = 1\n"}))
    # set the "encrypted" general-purpose flag bit in both headers
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = data.index(sig) + off
        data[pos] |= 0x01
    assert_rejected(images, bytes(data), "encrypted")


def test_existing_destination_refused_for_archive(images: Path) -> None:
    dest = images / "img"
    dest.mkdir()
    with pytest.raises(ImageRejected, match="already exists"):
        unpack(make_zip(TREE), dest)
    assert [p.name for p in images.iterdir()] == ["img"]
    assert list(dest.iterdir()) == []


# --------------------------------------------------------------------------- archive_directory


def test_archive_directory_round_trip_and_deterministic(tmp_path: Path, images: Path) -> None:
    src = tmp_path / "parallel"
    write_tree(src, TREE)
    write_tree(
        src,
        {
            "__pycache__/fanout.cpython-311.pyc": b"junk",
            "pkg/stale.pyc": b"junk",
            "pkg/__pycache__/sub.cpython-311.pyc": b"junk",
        },
    )
    (src / "fanout.py").chmod(0o755)
    first = archive_directory(src)
    (src / "helpers.py").touch()  # a new mtime must not change the bytes
    second = archive_directory(src)
    assert first == second

    with tarfile.open(fileobj=io.BytesIO(first), mode="r:gz") as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == ["fanout.py", "helpers.py", "pkg", "pkg/__init__.py", "pkg/sub.py"]
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" for m in members)

    dest = images / "img"
    result = unpack(first, dest, filename="parallel.tar.gz")
    assert result.kind is ImageKind.TAR_GZ
    assert files_under(dest) == TREE


def test_archive_directory_refuses_symlinks(tmp_path: Path) -> None:
    src = tmp_path / "flow"
    write_tree(src, {"fanout.py": b"x = 1\n"})
    (src / "link.py").symlink_to(src / "fanout.py")
    with pytest.raises(ImageRejected, match="symlink"):
        archive_directory(src)


def test_archive_directory_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageRejected, match="not a directory"):
        archive_directory(tmp_path / "missing")


def test_unexpected_failure_cleans_up(images: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import runtara_environment.image_archive as mod

    def boom(src: object, dst: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(mod.os, "rename", boom)
    with pytest.raises(OSError, match="disk on fire"):
        unpack(make_zip(TREE), images / "img")
    assert list(images.iterdir()) == []
