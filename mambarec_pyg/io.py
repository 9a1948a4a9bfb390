"""Atomic file writing: a reader never sees a half-written file.

Every writer in the library goes through :func:`atomic_path` (one file) or
:func:`atomic_directory` (a directory of files): each hands out a temporary path next to
the destination and renames it onto the destination only when the block finishes
without an exception; otherwise the temporary is removed.

A process killed while it writes (``kill -9``, power loss) cannot remove its temporary:
the temporary of ``DIR/NAME`` is the hidden file ``DIR/.NAME.XXXXXXXX.tmp``
(:func:`tempfile.mkstemp`'s random part between the prefix and the suffix), and
:func:`leftover_temporaries` finds those of one destination by exactly that pattern,
for a writer that owns the directory to remove.
"""
from __future__ import annotations

import contextlib
import json
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, List, Optional, Union

PathLike = Union[str, os.PathLike]

# the temporary of DIR/NAME is DIR/.NAME.<random>.tmp (the random part: mkstemp's
# letters, digits and underscores)
_TMP_SUFFIX = '.tmp'
_RANDOM = re.compile(r'[A-Za-z0-9_]+')


def _tmp_prefix(path: Path) -> str:
    return f'.{path.name}.'


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path that replaces ``path`` when the block succeeds.

    >>> with atomic_path('out.json') as tmp:
    ...     tmp.write_text('{}')
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path),
                               suffix=_TMP_SUFFIX)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates owner-only files; give the result the usual permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def leftover_temporaries(path: PathLike) -> List[Path]:
    """The temporaries :func:`atomic_path` made for ``path`` and could not remove (its
    process was killed while writing): the regular files ``.NAME.XXXXXXXX.tmp`` next
    to it, in name order. Other files, links and directories never match.

    Only the process that owns the directory should remove them (a writer that is
    still running has its temporary there too).
    """
    path = Path(path)
    prefix = _tmp_prefix(path)
    found = []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
            continue
        if not _RANDOM.fullmatch(name[len(prefix):-len(_TMP_SUFFIX)]):
            continue
        if entry.is_file(follow_symlinks=False):
            found.append(Path(entry.path))
    return sorted(found)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@contextlib.contextmanager
def atomic_directory(directory: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``directory`` when the block succeeds.

    The temporary directory lives next to the destination (same file system, so the
    final step is a rename) and is removed, with everything in it, on failure.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    if directory.exists() and not overwrite:
        raise FileExistsError(f"'{directory}' exists; pass overwrite=True to replace it")
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f'.{directory.name}.',
                                suffix='.tmp'))
    old: Optional[Path] = None
    try:
        yield tmp
        _make_readable(tmp)
        if directory.exists():
            if not overwrite:
                raise FileExistsError(f"'{directory}' appeared while writing")
            old = Path(tempfile.mkdtemp(dir=directory.parent,
                                        prefix=f'.{directory.name}.', suffix='.old'))
            os.replace(directory, old / 'previous')
        try:
            os.rename(tmp, directory)
        except OSError as e:
            if old is not None:  # put the previous version back
                os.replace(old / 'previous', directory)
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(f"'{directory}' appeared while writing") from None
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _make_readable(directory: Path) -> None:
    # Temporary files and directories are created owner-only; a finished dataset gets
    # the permissions of an ordinary file under the current umask.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for p in directory.iterdir():
        os.chmod(p, 0o666 & ~umask)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, 'tolist'):  # numpy scalars and arrays, torch tensors
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and (obj != obj or obj in (float('inf'), float('-inf'))):
        return str(obj)  # JSON has no NaN/inf
    return obj


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (tensors and numpy values as
    lists or numbers, paths as strings, NaN/inf as strings)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2) + '\n')
    return path
