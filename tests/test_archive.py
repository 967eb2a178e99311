"""The hostile-archive safe unpacker and package manifests, with real zip files."""

import io
import os
import stat
import struct
import zipfile

import pytest

from server.core import archive, packages

MANIFEST = "name: demo\nversion: '1.0.0'\n"


def make_zip(entries, manifest: str | None = MANIFEST, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """A zip of (name or ZipInfo, bytes) entries, package.yaml first unless manifest is None."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf:
        if manifest is not None:
            zf.writestr("package.yaml", manifest)
        for name, data in entries:
            zf.writestr(name, data)
    return buffer.getvalue()


def info(name: str, mode: int, extra: bytes = b"") -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name)
    entry.create_system = 3  # unix: the high 16 bits of external_attr are st_mode
    entry.external_attr = mode << 16
    entry.extra = extra
    return entry


def forge_size(data: bytes, name: str, size: int) -> bytes:
    """Rewrite the uncompressed size the central directory declares for `name` (a lying header)."""
    raw = bytearray(data)
    offset = raw.index(b"PK\x01\x02")
    while True:
        name_len = struct.unpack_from("<H", raw, offset + 28)[0]
        if raw[offset + 46:offset + 46 + name_len].decode() == name:
            struct.pack_into("<I", raw, offset + 24, size)
            return bytes(raw)
        extra_len, comment_len = struct.unpack_from("<HH", raw, offset + 30)
        offset += 46 + name_len + extra_len + comment_len


def duplicate_names() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("package.yaml", MANIFEST)
        zf.writestr("web/app.js", "one")
        with pytest.warns(UserWarning):
            zf.writestr("web/app.js", "two")
    return buffer.getvalue()


def corrupt_entry() -> bytes:
    data = bytearray(make_zip([("big.bin", os.urandom(4096))], compression=zipfile.ZIP_STORED))
    start = data.index(b"PK\x03\x04", 10) + 30 + len("big.bin")
    data[start + 100] ^= 0xFF  # flips a byte of the content: the CRC no longer matches
    return bytes(data)


def hard_link_extra(target: bytes) -> bytes:
    # PKWARE Unix extra field: atime, mtime, uid, gid, then the link's target.
    body = struct.pack("<IIHH", 0, 0, 0, 0) + target
    return struct.pack("<HH", archive.PKWARE_UNIX_EXTRA, len(body)) + body


# name -> (archive bytes, the reason's expected text)
HOSTILE = {
    "slip": (lambda: make_zip([("web/../../../evil.txt", "x")]), "path escapes the package ('..')"),
    "absolute": (lambda: make_zip([("/tmp/evil.txt", "x")]), "'/tmp/evil.txt': absolute path"),
    "symlink": (lambda: make_zip([(info("web/passwd", stat.S_IFLNK | 0o777), "/etc/passwd")]),
                "'web/passwd': symbolic link"),
    "hard link": (lambda: make_zip([(info("web/shadow", stat.S_IFREG | 0o644, hard_link_extra(b"/etc/shadow")),
                                     "")]), "'web/shadow': hard link"),
    "device": (lambda: make_zip([(info("dev/sda", stat.S_IFBLK | 0o600), "")]), "'dev/sda': device file"),
    "bomb": (lambda: make_zip([("zeros.bin", b"\0" * (20 << 20))]), "'zeros.bin': suspicious compression ratio"),
    "too large": (lambda: forge_size(make_zip([("huge.bin", b"x")], compression=zipfile.ZIP_STORED),
                                     "huge.bin", 0x7FFFFFFF), "too large uncompressed: more than 1073741824 bytes"),
    "too many files": (lambda: make_zip([(f"f/{i}", b"") for i in range(10_001)], compression=zipfile.ZIP_STORED),
                       "too many entries: 10002 (at most 10000)"),
    "corrupt zip": (lambda: b"PK\x03\x04 this is not really a zip file" * 10, "not a valid zip archive"),
    "corrupt entry": (corrupt_entry, "'big.bin': corrupt (Bad CRC-32"),
    "duplicate names": (duplicate_names, "'web/app.js': duplicate name"),
    "file and folder": (lambda: make_zip([("web", "a file"), ("web/app.js", "x")]),
                        "'web/app.js': conflicts with the file 'web'"),
    "backslash": (lambda: make_zip([("..\\evil.txt", "x")]), "backslash in path"),
}


def tree(root) -> set[str]:
    return {os.path.relpath(os.path.join(d, n), root) for d, dirs, files in os.walk(root) for n in dirs + files}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_rejected_and_nothing_escapes(case, tmp_path):
    build, reason = HOSTILE[case]
    data = build()
    dest = tmp_path / "staging" / "work"
    dest.mkdir(parents=True)
    before = tree(tmp_path)
    with pytest.raises(archive.UnsafeArchive) as caught:
        archive.extract(data, dest)
    assert reason in str(caught.value)
    written = {p for p in tree(tmp_path) - before}
    assert all(p.startswith(os.path.join("staging", "work")) for p in written), written
    assert not any("evil" in p or "passwd" in p or "shadow" in p for p in tree(tmp_path))


def test_bad_sha256_is_rejected():
    data = make_zip([("a.txt", "a")])
    archive.verify_sha256(data, archive.sha256_of(data))
    with pytest.raises(archive.UnsafeArchive, match="sha256 mismatch: expected 0{64}, got [0-9a-f]{64}"):
        archive.verify_sha256(data, "0" * 64)


def test_a_lying_header_cannot_write_more_than_declared(tmp_path):
    data = forge_size(make_zip([("small.txt", b"y" * 5000)], compression=zipfile.ZIP_STORED), "small.txt", 10)
    with pytest.raises(archive.UnsafeArchive, match="'small.txt': corrupt"):
        archive.extract(data, tmp_path)
    assert os.path.getsize(tmp_path / "small.txt") <= 10


def test_safe_archive_unpacks_files_folders_and_modes(tmp_path):
    data = make_zip([
        ("./web/index.html", "<h1>hi</h1>"),
        ("web/", ""),
        (info("bin/run.sh", stat.S_IFREG | 0o4755), "#!/bin/sh\n"),
        ("docs/a//b.txt", "b"),
    ])
    written = archive.extract(data, tmp_path)
    assert written == len(MANIFEST) + len("<h1>hi</h1>") + len("#!/bin/sh\n") + 1
    assert (tmp_path / "web" / "index.html").read_text() == "<h1>hi</h1>"
    assert (tmp_path / "docs" / "a" / "b.txt").read_text() == "b"
    mode = stat.S_IMODE(os.stat(tmp_path / "bin" / "run.sh").st_mode)
    assert mode & 0o111 and not mode & stat.S_ISUID  # executable kept, setuid never


def test_extract_refuses_a_non_empty_destination(tmp_path):
    (tmp_path / "old").write_text("x")
    with pytest.raises(archive.UnsafeArchive, match="is not empty"):
        archive.extract(make_zip([]), tmp_path)


@pytest.mark.parametrize("manifest, problem", [
    (None, "package.yaml is missing at the archive's root"),
    ("name: [unclosed\n", "package.yaml: not valid YAML at line 2"),
    ("- a\n- b\n", "package.yaml must be a mapping with 'name' and 'version'"),
    ("version: '1'\n", "package.yaml has no 'name'"),
    ("name: demo\n", "package.yaml has no 'version'"),
    ("name: Demo Addon\nversion: '1'\n", "package.yaml: name 'Demo Addon' is not a lowercase slug"),
    ("name: demo\nversion: 1.5\n", "package.yaml: version 1.5 must be a string (quote it: '1.5')"),
    ("name: demo\nversion: '../1'\n", "package.yaml: version '../1' is not a version string"),
])
def test_manifest_problems_are_named(manifest, problem):
    with pytest.raises(packages.PackageError) as caught:
        packages.validate(make_zip([("a.txt", "a")], manifest=manifest))
    assert str(caught.value).startswith(problem)


def test_manifest_in_a_subfolder_does_not_count():
    data = make_zip([("demo/package.yaml", MANIFEST)], manifest=None)
    with pytest.raises(packages.PackageError, match="package.yaml is missing at the archive's root"):
        packages.validate(data)
    assert packages.validate(make_zip([])) == packages.Manifest("demo", "1.0.0")
