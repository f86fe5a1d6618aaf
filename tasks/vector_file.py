"""A matrix of float32 vectors in a ``.npy`` file, read and written a piece at a time: never whole in memory.

    out = VectorFile.create(path, (n, 384))   # zeros on disk
    out[rows] = vectors                       # rows written through a memory map opened for this write alone
    pool = VectorFile(path)
    block = pool[1000:51000]                  # a view of rows 1000..50999: nothing read (numpy's slice semantics)
    array = np.asarray(block)                 # read now: (50000, 384) float32
    some = pool[[3, 7, 12]]                   # read now, as numpy's fancy indexing copies

Indexing follows numpy's: a slice is a view (here: of the file), an array of rows is a copy (here: read). Each read
or write maps the file only while it lasts, so the pages it touched leave the process when it returns: a sweep over
a 1.5 GB pool holds one block of it, where a ``np.load(mmap_mode="r")`` array would keep every page it touched in
the process's resident memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class VectorFile:
    """Rows ``start`` to ``stop`` of the (N, d) float32 matrix in ``path`` (all of them by default)."""

    def __init__(self, path: str | Path, start: int = 0, stop: int | None = None) -> None:
        self.path = Path(path)
        rows, self.dim = _open(self.path, "r").shape
        self.start, self.stop = start, rows if stop is None else stop

    @classmethod
    def create(cls, path: str | Path, shape: tuple[int, int]) -> VectorFile:
        """A new file of ``shape`` float32 zeros (sparse until written)."""
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape).flush()
        return cls(path)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.dim)

    dtype = np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        return len(self) * self.dim * self.dtype.itemsize

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError(f"{self.path}: rows are sliced with step 1, not {step}")
            return VectorFile(self.path, self.start + start, self.start + max(start, stop))
        return np.asarray(_open(self.path, "r")[self.start : self.stop][np.asarray(key)])

    def __setitem__(self, key, values: np.ndarray) -> None:
        rows = _open(self.path, "r+")
        rows[self.start : self.stop][key] = values
        rows.flush()

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = np.array(_open(self.path, "r")[self.start : self.stop])
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"VectorFile({str(self.path)!r}, rows {self.start}..{self.stop})"


def _open(path: Path, mode: str) -> np.memmap:
    return np.load(path, mmap_mode=mode)
