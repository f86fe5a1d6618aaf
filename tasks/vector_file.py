"""A matrix of float32 vectors in a ``.npy`` file, read and written a piece at a time: never whole in memory.

    out = VectorFile.create(path, (n, 384))   # zeros on disk
    out[rows] = vectors                       # rows written through a memory map made for this write alone
    pool = VectorFile(path)
    block = pool[1000:51000]                  # a view of rows 1000..50999: nothing read (numpy's slice semantics)
    array = np.asarray(block)                 # read now: (50000, 384) float32
    some = pool[[3, 7, 12]]                   # read now, as numpy's fancy indexing copies
    pooled = pool.reordered(order)            # the rows permuted by ``order``, in a file of their own

Indexing follows numpy's: a slice is a view (here: of the file), an array of rows is a copy (here: read). Each read
or write maps only the rows it needs and only while it lasts, so the pages it touched leave the process when it
returns: a sweep over a 1.5 GB pool holds one block of it, where a ``np.load(mmap_mode="r")`` array would keep every
page it touched in the process's resident memory. The file stays open while a ``VectorFile`` (or a view of it)
exists, so a folder replaced meanwhile (``hbir.core.files.replace_dir``) does not pull it away mid-read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

COPY_ROWS = 16_384  # rows read and written at once by ``reordered`` (384-d: 24 MiB)


class VectorFile:
    """Rows ``start`` to ``stop`` of the (N, d) float32 matrix in ``path`` (all of them by default)."""

    dtype = np.dtype(np.float32)

    def __init__(self, path: str | Path, start: int = 0, stop: int | None = None, _file: _OpenFile | None = None):
        self.path = Path(path)
        self._file = _file or _OpenFile(self.path, "rb")
        self.dim = self._file.dim
        self.start, self.stop = start, self._file.rows if stop is None else stop

    @classmethod
    def create(cls, path: str | Path, shape: tuple[int, int]) -> VectorFile:
        """A new file of ``shape`` float32 zeros (sparse until written), open for writing."""
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape).flush()
        return cls(path, _file=_OpenFile(Path(path), "r+b"))

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.dim)

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
            return VectorFile(self.path, self.start + start, self.start + max(start, stop), self._file)
        if isinstance(key, int | np.integer):
            return self[[key]][0]
        rows = np.asarray(key)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise IndexError(f"{self.path}: a mask of {rows.shape} rows for a view of {len(self)}")
            rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64).reshape(-1)
        rows = np.where(rows < 0, rows + len(self), rows)
        if not len(rows):
            return np.empty((0, self.dim), dtype=self.dtype)
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"{self.path}: rows {rows.min()}..{rows.max()} outside 0..{len(self) - 1}")
        low, high = int(rows.min()), int(rows.max()) + 1
        return np.asarray(self._map("r", low, high)[rows - low])

    def __setitem__(self, key, values: np.ndarray) -> None:
        rows = self._map("r+", 0, len(self))
        rows[key] = values
        rows.flush()

    def reordered(self, order: np.ndarray) -> VectorFile:
        """This view's rows in the order ``order`` (a permutation of them) gives, copied to a new file beside it: read
        COPY_ROWS at a time in file order (rows gathered from all over a file mapped for a read bring their
        neighbours in with them) and written to their new places. The new file is removed from the folder as soon as
        it is opened: it lasts while the copy (or a view of it) is open, and a killed process leaves nothing."""
        if len(order) != len(self):
            raise ValueError(f"{self.path}: an order of {len(order)} rows for a view of {len(self)}")
        position = np.empty(len(self), dtype=np.int64)
        position[order] = np.arange(len(self))
        handle, name = tempfile.mkstemp(prefix=f".{self.path.stem}-reordered-", suffix=".npy", dir=self.path.parent)
        os.close(handle)
        try:
            copy = VectorFile.create(name, (len(self), self.dim))
        finally:
            os.unlink(name)
        for start in range(0, len(self), COPY_ROWS):
            copy[position[start : start + COPY_ROWS]] = np.asarray(self[start : start + COPY_ROWS])
        return copy

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = np.array(self._map("r", 0, len(self))) if len(self) else np.empty((0, self.dim), self.dtype)
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def _map(self, mode: str, low: int, high: int) -> np.memmap:
        """Rows ``low`` to ``high`` of this view, memory-mapped until the array returned is dropped."""
        offset = self._file.offset + (self.start + low) * self.dim * self.dtype.itemsize
        return np.memmap(self._file.stream, self.dtype, mode, offset, (high - low, self.dim))

    def __repr__(self) -> str:
        return f"VectorFile({str(self.path)!r}, rows {self.start}..{self.stop})"


class _OpenFile:
    """A ``.npy`` file kept open by the ``VectorFile`` views that share it, closed when the last is dropped; its
    header read once: where the rows start, how many, how wide."""

    def __init__(self, path: Path, mode: str) -> None:
        self.stream = open(path, mode)  # open for the views' lifetime (module doc), not in a with block
        version = np.lib.format.read_magic(self.stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(self.stream)
        if len(shape) != 2 or fortran_order or dtype != VectorFile.dtype:
            raise ValueError(f"{path}: not a (rows, dim) float32 matrix in C order: {shape} {dtype}")
        self.offset, (self.rows, self.dim) = self.stream.tell(), shape

    def __del__(self) -> None:
        if hasattr(self, "stream"):  # not when open() failed
            self.stream.close()
