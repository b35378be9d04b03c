"""All-or-nothing writes: every file diffspeed produces appears complete or not at all.

One pattern for everything: write into a hidden temporary sibling (``.<name>.<random>.tmp``),
flush and ``fsync`` it, ``os.replace`` it over the target, then ``fsync`` the folder so the
rename itself survives a crash. A kill at any point leaves either the old file or the new
one, plus at most a stale ``.tmp`` that :func:`clean_stale` removes (runs do on resume).

A folder artifact (a LoRA export, a run's shipped copy) is built the same way as a hidden
temporary folder renamed into place by :func:`atomic_dir`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from diffspeed.errors import ConfigError

#: Test hook: called with a label at every write boundary (before writing, after the data is
#: on disk, after the rename). Tests set it to kill the process at boundary ``k``.
on_boundary: Callable[[str], None] | None = None


def _boundary(label: str) -> None:
    if on_boundary is not None:
        on_boundary(label)


def umask_mode(directory: bool = False) -> int:
    """The permission bits a new file (or folder) gets from the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform without folder handles (Windows): the rename is enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in sorted({root, *(p for p in root.rglob("*") if p.is_dir())}):
        _fsync_dir(d)


def writable_parent(path: str | os.PathLike, what: str = "output", *, folder: bool = False) -> Path:
    """Create ``path``'s folder and check it can be written, or raise a :class:`ConfigError`.

    Catches the usual mistakes before any work is done: a parent that is a file, a folder
    without write permission, ``path`` itself being a folder (a file when ``folder``).
    """
    path = Path(path)
    if path.is_dir() and not folder:
        raise ConfigError(f"{what} {path} is a folder; give a file name inside it")
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file; give a folder path")
    for parent in (path.parent, *path.parent.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"cannot write {what} {path}: {parent} is a file, not a folder; "
                    "choose another path"
                )
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(
            f"cannot create the folder of {what} {path} ({e.strerror}); choose a writable path"
        ) from None
    if not os.access(path.parent, os.W_OK):
        raise ConfigError(
            f"cannot write {what} {path}: {path.parent} is not writable; choose a writable path"
        )
    return path


#: Image formats the PNG/plot writers accept (matplotlib's raster and vector formats).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".webp", ".tif", ".tiff")


def image_target(path: str | os.PathLike, default_name: str) -> Path:
    """Where an image goes: ``path`` itself, or ``path/default_name`` for an existing folder.

    Raises:
        ConfigError: a path without a known image suffix, or one that cannot be written.
    """
    path = Path(path)
    if path.is_dir():
        path = path / default_name
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError(
            f"cannot tell the image format of {path}: give a file name ending in one of "
            f"{', '.join(IMAGE_SUFFIXES)} (e.g. {path.with_suffix('.png')}), or an existing folder"
        )
    return writable_parent(path, "image")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Produce ``path`` all at once: ``write(tmp)`` fills a temporary sibling, then it replaces
    ``path``.

    Args:
        path: the target file.
        write: writes the complete file at the path it is given (e.g. ``fig.savefig``).

    Returns:
        ``path``.
    """
    path = writable_parent(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        _boundary(f"write {path.name}")
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        _boundary(f"rename {path.name}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _boundary(f"done {path.name}")
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON with sorted keys atomically (same object, same bytes)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder artifact in a temporary sibling; it replaces ``path`` when the block ends.

    Yields the temporary folder to fill. On an exception nothing changes at ``path``. An
    existing ``path`` is moved aside and removed only after the new folder is in place.
    """
    path = writable_parent(path, folder=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _fsync_tree(tmp)
        os.chmod(tmp, umask_mode(directory=True))
        _boundary(f"rename {path.name}/")
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _boundary(f"done {path.name}/")


def clean_stale(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders a killed write left in ``folder``.

    Returns the removed paths.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.glob(".*.tmp")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
