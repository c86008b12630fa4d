"""Atomic output files: every file rfscope writes appears whole, or the previous one stays.

- :func:`write_file` writes one file; :func:`staged` stages several and replaces them
  all only when the block ends without an error (a failed run leaves the previous
  files untouched).
- Data goes to a temporary file in the target's own directory (so the final
  ``os.replace`` is a rename on one file system), is flushed with ``fsync`` and
  renamed at the end.  If a rename fails part-way, the files already replaced are
  put back from hard-link backups taken just before.
- A symlink is written through: its target is replaced, the link is kept.
- A replaced file keeps its permission bits and its owner and group.
- A full disk (``ENOSPC``/``EDQUOT``) raises :class:`DiskFullError`, which names the
  file and says the disk is full; every other failure raises :class:`OutputError`
  naming the file.
- :func:`check_output_file` and :func:`check_output_dir` validate paths before any
  work starts, with one-line messages.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rfscope.core.errors import RfscopeError

__all__ = [
    "OutputError", "DiskFullError", "Staging", "staged", "write_file", "check_output_file", "check_output_dir",
    "real_target",
]

_CHUNK = 1 << 20
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class OutputError(RfscopeError, OSError):
    """An output file could not be written; the previous file (if any) is unchanged."""

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else str(self.args[0])


class DiskFullError(OutputError):
    """The disk (or the quota) is full; the message names the file."""


def _error(e: OSError, shown: str | os.PathLike[str], doing: str = "write") -> OutputError:
    if isinstance(e, OutputError):
        return e
    if e.errno in _FULL:
        return DiskFullError(e.errno, f"cannot {doing} {str(shown)!r}: the disk is full ({e.strerror or 'no space'}); "
                                      "no file was replaced")
    why = e.strerror or str(e) or type(e).__name__
    return OutputError(e.errno, f"cannot {doing} {str(shown)!r}: {why}; no file was replaced")


def real_target(path: str | os.PathLike[str]) -> Path:
    """The file a write to ``path`` replaces: symlinks (also dangling ones) resolved."""
    return Path(os.path.realpath(path))


# ----------------------------------------------------------------------------- checks before any work
def _writable_dir(d: Path, what: str, create: bool = False) -> None:
    if d.exists() and not d.is_dir():
        raise NotADirectoryError(f"{what} directory {str(d)!r} is not a directory")
    if not d.is_dir():
        if not create:
            raise FileNotFoundError(f"{what} directory {str(d)!r} does not exist; create it first")
        up = d.parent
        while not up.exists() and up != up.parent:
            up = up.parent
        if not up.is_dir():
            raise NotADirectoryError(f"cannot create {what} directory {str(d)!r}: {str(up)!r} is not a directory")
        if not os.access(up, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot create {what} directory {str(d)!r}: {str(up)!r} is not writable")
        return
    if not os.access(d, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} directory {str(d)!r} is not writable")


def check_output_file(path: str | os.PathLike[str], what: str = "output", create_dir: bool = False) -> Path:
    """Check, before any work, that ``path`` can be replaced; returns the real target.

    The target (through symlinks) must not be a directory or a read-only file, and
    its directory must exist (or, with ``create_dir``, be creatable) and be writable.
    """
    target = real_target(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {what} {str(path)!r}: it is a directory")
    if target.exists() and not os.access(target, os.W_OK):
        raise PermissionError(f"cannot write {what} {str(path)!r}: the file is read-only")
    _writable_dir(target.parent, what, create=create_dir)
    return target


def check_output_dir(directory: str | os.PathLike[str], names: Iterable[str], what: str = "output") -> Path:
    """Check, before any work, that ``directory`` exists or can be created and that each of
    ``names`` in it can be replaced."""
    d = Path(directory)
    real = real_target(d)
    _writable_dir(real, what, create=True)
    for n in names:
        if real.is_dir():
            check_output_file(d / n, what)
    return d


# ----------------------------------------------------------------------------- staging
@dataclass
class _Item:
    shown: Path  # the path as given (messages, return values)
    target: Path  # the real file replaced
    tmp: Path | None  # None: remove the target at commit
    old: os.stat_result | None  # the file replaced, if any


class Staging:
    """Files staged in temporary files next to their targets; :meth:`commit` renames them all."""

    def __init__(self) -> None:
        self._items: list[_Item] = []
        self._closed = False

    def _add(self, path: str | os.PathLike[str], create: bool) -> _Item:
        if self._closed:
            raise RuntimeError("this staging is already committed or discarded")
        shown, target = Path(path), real_target(path)
        if any(it.target == target for it in self._items):
            raise ValueError(f"{str(shown)!r} is staged twice")
        try:
            old = os.stat(target)
        except FileNotFoundError:
            old = None
        except OSError as e:
            raise _error(e, shown) from e
        if old is not None and stat.S_ISDIR(old.st_mode):
            raise OutputError(errno.EISDIR, f"cannot write {str(shown)!r}: it is a directory")
        item = _Item(shown, target, None, old)
        if create:
            # an existing file's data never sits in a file more open than the old one: 0600, set at commit
            mode = 0o600 if old is not None else 0o666
            for _ in range(100):
                tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
                except FileExistsError:
                    continue
                except OSError as e:
                    raise _error(e, shown) from e
                os.close(fd)
                item.tmp = tmp
                break
            else:
                raise OutputError(errno.EEXIST, f"cannot create a temporary file next to {str(shown)!r}")
        self._items.append(item)
        return item

    def write(self, path: str | os.PathLike[str], data: bytes) -> Path:
        """Stage ``data`` as the new content of ``path``; returns ``path``."""
        item = self._add(path, create=True)
        assert item.tmp is not None
        try:
            fd = os.open(item.tmp, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                view = memoryview(data)
                while view:
                    n = os.write(fd, view[:_CHUNK])
                    view = view[n:]
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise _error(e, item.shown) from e
        return item.shown

    def reserve(self, path: str | os.PathLike[str]) -> Path:
        """An empty temporary file that becomes ``path`` at commit, for another program to fill."""
        item = self._add(path, create=True)
        assert item.tmp is not None
        return item.tmp

    def remove(self, path: str | os.PathLike[str]) -> None:
        """Delete ``path`` at commit (a stale file of the previous run); nothing if it does not exist."""
        if os.path.lexists(real_target(path)):
            self._add(path, create=False)

    def _settle(self, it: _Item) -> None:
        """Give the staged file the replaced file's owner, group and permission bits."""
        assert it.tmp is not None
        if it.old is None:
            return
        cur = os.stat(it.tmp)
        if (cur.st_uid, cur.st_gid) != (it.old.st_uid, it.old.st_gid):
            try:
                os.chown(it.tmp, it.old.st_uid, it.old.st_gid)
            except PermissionError as e:
                raise OutputError(
                    errno.EPERM, f"cannot replace {str(it.shown)!r} and keep its owner (uid {it.old.st_uid}, "
                                 f"gid {it.old.st_gid}): {e.strerror}; remove it or write elsewhere") from e
        os.chmod(it.tmp, stat.S_IMODE(it.old.st_mode))  # after chown, which clears set-id bits

    def _backup(self, target: Path) -> Path | None:
        """A hard link to the file about to be replaced (None where links are not supported)."""
        for _ in range(100):
            b = target.parent / f".{target.name}.{secrets.token_hex(4)}.bak"
            try:
                os.link(target, b, follow_symlinks=False)
                return b
            except FileExistsError:
                continue
            except OSError:
                return None
        return None

    def commit(self) -> None:
        """Rename every staged file onto its target (and delete the removed ones), all or nothing."""
        if self._closed:
            raise RuntimeError("this staging is already committed or discarded")
        done: list[tuple[_Item, Path | None, bool]] = []
        current: _Item | None = None
        try:
            for it in self._items:
                current = it
                if it.tmp is not None:
                    self._settle(it)
            for it in self._items:
                current = it
                existed = os.path.lexists(it.target)
                backup = self._backup(it.target) if existed else None
                try:
                    if it.tmp is None:
                        if existed:
                            os.unlink(it.target)
                    else:
                        os.replace(it.tmp, it.target)
                except BaseException:
                    if backup is not None:
                        backup.unlink(missing_ok=True)
                    raise
                done.append((it, backup, existed))
        except BaseException as e:
            for it, backup, existed in reversed(done):  # put the previous files back
                try:
                    if backup is not None:
                        os.replace(backup, it.target)
                    elif not existed:
                        it.target.unlink(missing_ok=True)
                except OSError:
                    pass
            self.discard()
            if isinstance(e, OSError):
                raise _error(e, current.shown if current is not None else "?", "replace") from e
            raise
        for _, backup, _ in done:
            if backup is not None:
                backup.unlink(missing_ok=True)
        self._closed = True
        for d in {it.target.parent for it in self._items}:  # make the renames durable (best effort)
            try:
                fd = os.open(d, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)

    def discard(self) -> None:
        """Delete every staged temporary file; the targets are left as they are."""
        for it in self._items:
            if it.tmp is not None:
                try:
                    it.tmp.unlink(missing_ok=True)
                except OSError:
                    pass
        self._closed = True


@contextmanager
def staged() -> Iterator[Staging]:
    """Stage files in the block; commit them all at its end, or discard them all on any error.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with staged() as s:
    ...     _ = s.write(d / "a.txt", b"a")
    ...     _ = s.write(d / "b.txt", b"b")
    >>> sorted(p.name for p in d.iterdir())
    ['a.txt', 'b.txt']
    """
    s = Staging()
    try:
        yield s
    except BaseException:
        s.discard()
        raise
    s.commit()


def write_file(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically (see the module docstring); returns ``path``."""
    with staged() as s:
        s.write(path, data)
    return Path(path)
