"""The write discipline of every command: nothing half-written, nothing lost.

* Files: :func:`atomic_write` writes a temporary file beside the target and moves it into
  place only when complete.  With ``overwrite=False`` the move is a hard link, which fails if
  the target appeared meanwhile, so "do not overwrite" holds between concurrent processes too.
* Folders: :func:`staged_dir` builds the result in a temporary sibling and
  :func:`replace_dir` puts it in place at the end (an existing target is moved aside first
  and removed only once the new one is there).
* Inputs are safe: :func:`refuse_overlap` refuses an output that is, contains or lies inside
  an input, before anything is written.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable

# link() is not available on every file system (FAT/exFAT, some network mounts)
_NO_LINK = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, getattr(errno, "ENOSYS", -1)}


def atomic_write(path, write: Callable[[BinaryIO], None], overwrite: bool = True) -> None:
    """Call ``write(f)`` on a temporary file in ``path``'s folder, then move it to ``path``.

    An interrupted or failing write leaves nothing behind; the file gets the usual
    permissions (0666 minus the umask), not mkstemp's private 0600.  ``overwrite=False``
    raises FileExistsError if ``path`` exists when the file is moved into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if overwrite:
            os.replace(tmp, path)
        else:
            _move_exclusive(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _move_exclusive(tmp: str, path: Path) -> None:
    try:
        os.link(tmp, path)  # atomic: fails with EEXIST if path exists
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists (use --overwrite)", str(path)) from None
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        try:  # no hard links here: reserve the name exclusively, then replace the reservation
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            raise FileExistsError(errno.EEXIST, "exists (use --overwrite)", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def _real(path) -> Path:
    return Path(os.path.realpath(os.fspath(path)))


def refuse_overlap(output, inputs, what: str = "output") -> None:
    """ValueError if ``output`` is, contains or lies inside one of ``inputs`` (symlinks resolved)."""
    out = _real(output)
    for item in inputs:
        if item is None:
            continue
        inp = _real(item)
        if out == inp:
            raise ValueError(f"{what} {output} is the input {item}")
        if out in inp.parents:
            raise ValueError(f"{what} {output} contains the input {item}")
        if inp in out.parents:
            raise ValueError(f"{what} {output} lies inside the input {item}")


def check_replaceable(target, force: bool, marker: str | None = None) -> None:
    """Before any work: ``target`` must not exist, or (with ``force``) be a folder this command
    made (it holds ``marker``) or an empty one; a file or another folder is never replaced."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if not force:
        raise FileExistsError(errno.EEXIST, "exists (use --force to replace it)", str(target))
    if not target.is_dir() or target.is_symlink():
        raise FileExistsError(errno.EEXIST, "exists and is not a folder; refusing to replace it", str(target))
    if any(target.iterdir()) and (marker is None or not (target / marker).is_file()):
        raise FileExistsError(errno.EEXIST, f"exists and is not a model directory (no {marker}); refusing to "
                                            "replace it", str(target))


@contextmanager
def staged_dir(target):
    """A temporary sibling of ``target`` to build into; put in place by :func:`replace_dir` when
    the block ends normally, removed when it raises."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(staged, target) -> None:
    """Put the folder ``staged`` at ``target``; an existing ``target`` is moved aside first and
    removed once ``staged`` is in place (restored if that fails)."""
    staged, target = Path(staged), Path(target)
    if not target.exists():
        staged.rename(target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    aside.rmdir()
    target.rename(aside)
    try:
        staged.rename(target)
    except BaseException:
        aside.rename(target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
