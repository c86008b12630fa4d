"""Atomic outputs: whole files or the previous ones, through symlinks, keeping mode and owner."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from rfscope.export.files import DiskFullError, OutputError, check_output_dir, check_output_file, staged, write_file


def _leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def full_disk_after(monkeypatch: pytest.MonkeyPatch, under: Path, nbytes: int) -> None:
    """``os.write`` into files under ``under`` writes ``nbytes`` in all, then fails with ENOSPC."""
    real = os.write
    left = [nbytes]

    def write(fd: int, data: bytes | memoryview) -> int:
        if not _fd_path(fd).startswith(str(under)):
            return real(fd, data)
        if left[0] <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = real(fd, bytes(data)[: left[0]])
        left[0] -= n
        return n

    monkeypatch.setattr(os, "write", write)


def test_new_file_gets_the_usual_mode(tmp_path: Path) -> None:
    p = tmp_path / "a.bin"
    assert write_file(p, b"hello") == p
    assert p.read_bytes() == b"hello"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o755, 0o444 | 0o200])
def test_replacing_keeps_the_mode(tmp_path: Path, mode: int) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(b"old")
    p.chmod(mode)
    ino = p.stat().st_ino
    write_file(p, b"new")
    assert p.read_bytes() == b"new" and stat.S_IMODE(p.stat().st_mode) == mode
    assert p.stat().st_ino != ino  # replaced by a rename, not rewritten in place


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_replacing_keeps_the_owner(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(b"old")
    os.chown(p, 4321, 8765)
    p.chmod(0o640)
    write_file(p, b"new")
    st = p.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 8765, 0o640)


def test_owner_that_cannot_be_kept_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "a.txt"
    p.write_bytes(b"old")
    real_stat = os.stat

    class Other:  # the old file looks owned by someone else, and chown is refused
        def __init__(self, st: os.stat_result) -> None:
            self._st = st

        def __getattr__(self, k: str) -> object:
            return 999_999 if k in ("st_uid", "st_gid") else getattr(self._st, k)

    monkeypatch.setattr(os, "stat", lambda q, *a, **k: Other(real_stat(q)) if Path(q) == p else real_stat(q, *a, **k))

    def refuse(*a: object, **k: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "chown", refuse)
    with pytest.raises(OutputError, match="keep its owner"):
        write_file(p, b"new")
    assert p.read_bytes() == b"old" and _leftovers(tmp_path) == []


def test_symlink_is_written_through(tmp_path: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = real_dir / "t.txt"
    target.write_bytes(b"old")
    target.chmod(0o600)
    link = tmp_path / "link.txt"
    link.symlink_to(os.path.relpath(target, tmp_path))
    write_file(link, b"new")
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(target, tmp_path)
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _leftovers(tmp_path) == [] and _leftovers(real_dir) == []
    dangling = tmp_path / "dangling.txt"
    dangling.symlink_to(real_dir / "new.txt")
    write_file(dangling, b"x")
    assert dangling.is_symlink() and (real_dir / "new.txt").read_bytes() == b"x"


def test_disk_full_names_the_file_and_keeps_the_old_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "erf.npy"
    p.write_bytes(b"previous run")
    full_disk_after(monkeypatch, tmp_path, 1000)
    with pytest.raises(DiskFullError) as ei:
        write_file(p, b"x" * 4096)
    msg = str(ei.value)
    assert "erf.npy" in msg and "disk is full" in msg and "\n" not in msg
    assert ei.value.errno == errno.ENOSPC and isinstance(ei.value, OSError)
    assert p.read_bytes() == b"previous run" and _leftovers(tmp_path) == []


def test_staged_files_are_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"old a")
    b.write_bytes(b"old b")
    full_disk_after(monkeypatch, tmp_path, 10)
    with pytest.raises(DiskFullError, match="'.*/b'"):
        with staged() as s:
            s.write(a, b"new a")  # 5 bytes: fits
            s.write(b, b"new b, longer")  # the disk fills here
            s.write(c, b"new c")
    monkeypatch.undo()
    assert (a.read_bytes(), b.read_bytes(), c.exists()) == (b"old a", b"old b", False)
    assert _leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt):  # any exception in the block discards everything
        with staged() as s:
            s.write(a, b"new a")
            raise KeyboardInterrupt
    assert a.read_bytes() == b"old a" and _leftovers(tmp_path) == []
    with staged() as s:
        s.write(a, b"new a")
        s.write(c, b"new c")
        s.remove(b)
        s.remove(tmp_path / "never-existed")
    assert (a.read_bytes(), b.exists(), c.read_bytes()) == (b"new a", False, b"new c")
    assert _leftovers(tmp_path) == []


def test_a_failed_rename_puts_the_replaced_files_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"old a")
    c.write_bytes(b"old c")
    real: Callable[..., None] = os.replace
    calls = [0]

    def flaky(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if str(src).endswith(".tmp"):
            calls[0] += 1
            if calls[0] == 3:
                raise OSError(errno.EIO, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OutputError, match="'.*/c'.*Input/output error"):
        with staged() as s:
            s.write(a, b"new a")  # replaced, then put back
            s.write(b, b"new b")  # created, then removed again
            s.write(c, b"new c")  # this rename fails
    assert (a.read_bytes(), b.exists(), c.read_bytes()) == (b"old a", False, b"old c")
    assert _leftovers(tmp_path) == []


def test_checks_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(IsADirectoryError, match="is a directory"):
        check_output_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_output_file(tmp_path / "missing" / "x.png")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError):
        check_output_file(f / "x.png")
    with pytest.raises(NotADirectoryError):
        check_output_dir(f, ["erf.npy"])
    with pytest.raises(NotADirectoryError):
        check_output_dir(f / "sub" / "deeper", ["erf.npy"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "erf.json").mkdir()
    with pytest.raises(IsADirectoryError, match="erf.json"):
        check_output_dir(tmp_path / "out", ["erf.npy", "erf.json"])
    assert check_output_dir(tmp_path / "new" / "sub", ["erf.npy"]) == tmp_path / "new" / "sub"
    assert not (tmp_path / "new").exists()  # checked, not created
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == f else real(p, m))
    with pytest.raises(PermissionError, match="read-only"):
        check_output_file(f)
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == tmp_path else real(p, m))
    with pytest.raises(PermissionError, match="not writable"):
        check_output_dir(tmp_path / "x", ["erf.npy"])
