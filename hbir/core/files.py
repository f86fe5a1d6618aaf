"""Files that are never half there: write-then-rename for files and folders, build-once folders, SHA-256.

    write_file(path, lambda tmp: np.save(tmp, vectors))       # a file: written beside, renamed into place
    replace_dir(out_dir, lambda work: encoder.save(work))     # a folder: built beside, swapped in when complete
    build_once(out_dir, build)                                # a cached folder: built only when it is missing

Temporary names are unique (``tempfile``), so two writers never share one, and a crash leaves only a hidden
``.<name>.*`` behind, never a half-written ``<name>``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from hbir.core.errors import DataError

CHUNK = 1 << 20


def read_file_bytes(path: str | Path) -> bytes:
    """A data file's bytes; one that cannot be read (missing, a symbolic link loop, no permission, a folder) is a
    DataError naming it."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise unreadable(path, error) from None


def data_file_digest(path: str | Path) -> bytes:
    """SHA-256 of a data file's bytes (raw digest), read in chunks: a corpus of gigabytes is never whole in memory.
    A file that cannot be read is a DataError naming it, as for ``read_file_bytes``."""
    try:
        return bytes.fromhex(file_sha256(path))
    except OSError as error:
        raise unreadable(path, error) from None


def unreadable(path: str | Path, error: OSError) -> DataError:
    return DataError(path, f"cannot be read: {error.strerror or error} (errno {error.errno})")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: done once, at import, not while threads write files
    os.umask(mask)
    return mask


UMASK = _current_umask()


def write_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Create or replace ``path`` with what ``write(tmp)`` writes to a temporary file beside it; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``write_file`` for a UTF-8 text."""
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _work_dir(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    os.chmod(work, 0o777 & ~UMASK)  # mkdtemp makes it private; the result is an ordinary folder
    return work


def replace_dir(out_dir: str | Path, build: Callable[[Path], None]) -> Path:
    """Create or replace the folder ``out_dir`` with what ``build(work)`` puts in a temporary folder beside it; the
    old folder is removed only once the new one is complete. Returns ``out_dir``."""
    out_dir = Path(out_dir)
    work = _work_dir(out_dir)
    try:
        build(work)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        work.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def build_once(out_dir: str | Path, build: Callable[[Path], None], marker: str = "model.safetensors") -> Path:
    """Return ``out_dir``, first calling ``build(work)`` to fill it when it lacks ``marker``.

    The folder is built beside ``out_dir`` and renamed into place, so a crash leaves no half-written folder and two
    processes building at once both end with the same complete one.
    """
    out_dir = Path(out_dir)
    if (out_dir / marker).exists():
        return out_dir
    work = _work_dir(out_dir)
    try:
        build(work)
        try:
            work.rename(out_dir)
        except OSError:
            if not (out_dir / marker).exists():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir
