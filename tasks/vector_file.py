"""A matrix of float32 vectors in a ``.npy`` file, read and written a piece at a time: never whole in memory.

    out = VectorFile.create(path, (n, 384))   # zeros on disk
    out[rows] = vectors                       # rows written to the file now
    pool = VectorFile(path)
    block = pool[1000:51000]                  # a view of rows 1000..50999: nothing read (numpy's slice semantics)
    array = np.asarray(block)                 # read now: (50000, 384) float32
    some = pool[[3, 7, 12]]                   # read now, as numpy's fancy indexing copies
    pooled = pool.reordered(order)            # the rows permuted by ``order``, in a file of their own

Indexing follows numpy's: a slice is a view (here: of the file), an array of rows is a copy (here: read). Rows are
read into and written from the process's own arrays by positional reads and writes (``os.pread`` / ``os.pwrite``),
each run of consecutive rows at once: the file's pages stay in the kernel's page cache and never count in the
process's resident memory. A memory map would bring every page it touched in, and with it its neighbours
(fault-around): a shard of 50k rows scattered over a language's 300k, written through one map, brought in the pages
of nearly all 300k (1M pool, 384-d: +150-220 MiB), and reading 3 x 1,000 scattered rows added 470 MiB. The file
stays open while a ``VectorFile`` (or a view of it) exists, so a folder replaced meanwhile
(``hbir.core.files.replace_dir``) does not pull it away mid-read.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

COPY_ROWS = 16_384  # rows read and written at once by ``reordered`` (384-d: 24 MiB)
IO_BYTES = 16 << 20  # bytes a single read or write asks for


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
        rows = self._positions(key)
        present, where = np.unique(rows, return_inverse=True)  # each row read once, runs of them at a time
        found = np.empty((len(present), self.dim), dtype=self.dtype)
        for first, last in _runs(present):
            self._file.read_into(found[first:last], self.start + int(present[first]))
        return found if np.array_equal(present, rows) else found[where]  # rows ascending: already in their order

    def __setitem__(self, key, values: np.ndarray) -> None:
        rows = self._positions(np.arange(len(self))[key] if isinstance(key, slice | int | np.integer) else key)
        values = np.broadcast_to(np.asarray(values, dtype=self.dtype), (len(rows), self.dim))
        ascending = (np.diff(rows) > 0).all()  # a slice, a block in file order: written from views, not copies
        order = slice(None) if ascending else np.argsort(rows, kind="stable")  # a row given twice: the last wins
        placed = rows[order]
        for first, last in _runs(placed):
            piece = values[first:last] if ascending else values[order[first:last]]
            self._file.write(self.start + int(placed[first]), piece)

    def _positions(self, key) -> np.ndarray:
        """The rows of this view ``key`` names (an array of rows, negative from the end, or a mask), checked."""
        rows = np.asarray(key)
        if rows.dtype == bool:
            if rows.shape != (len(self),):
                raise IndexError(f"{self.path}: a mask of {rows.shape} rows for a view of {len(self)}")
            return np.flatnonzero(rows)
        rows = rows.astype(np.int64).reshape(-1)
        rows = np.where(rows < 0, rows + len(self), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"{self.path}: rows {rows.min()}..{rows.max()} outside 0..{len(self) - 1}")
        return rows

    def reordered(self, order: np.ndarray) -> VectorFile:
        """This view's rows in the order ``order`` (a permutation of them) gives, copied to a new file beside it: read
        COPY_ROWS at a time in file order and written to their new places. The new file is removed from the folder
        as soon as it is opened: it lasts while the copy (or a view of it) is open, and a killed process leaves
        nothing."""
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
        rows = np.empty(self.shape, dtype=self.dtype)
        self._file.read_into(rows, self.start)
        return rows if dtype is None else rows.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"VectorFile({str(self.path)!r}, rows {self.start}..{self.stop})"


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """The runs of consecutive numbers in ``rows`` (sorted): (first, last) positions in ``rows``, last excluded."""
    cuts = np.flatnonzero(np.diff(rows) != 1) + 1
    return list(zip([0, *cuts.tolist()], [*cuts.tolist(), len(rows)], strict=True)) if len(rows) else []


class _OpenFile:
    """A ``.npy`` file kept open by the ``VectorFile`` views that share it, closed when the last is dropped; its
    header read once: where the rows start, how many, how wide."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self.stream = open(path, mode)  # open for the views' lifetime (module doc), not in a with block
        version = np.lib.format.read_magic(self.stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(self.stream)
        if len(shape) != 2 or fortran_order or dtype != VectorFile.dtype:
            raise ValueError(f"{path}: not a (rows, dim) float32 matrix in C order: {shape} {dtype}")
        self.offset, (self.rows, self.dim) = self.stream.tell(), shape
        self.row_bytes = self.dim * VectorFile.dtype.itemsize

    def read_into(self, rows: np.ndarray, first: int) -> None:
        """Fill ``rows`` (C-contiguous float32, this file's width) with the file's rows from ``first`` on."""
        buffer, offset, done = memoryview(rows).cast("B"), self.offset + first * self.row_bytes, 0
        while done < len(buffer):
            chunk = os.pread(self.stream.fileno(), min(len(buffer) - done, IO_BYTES), offset + done)
            if not chunk:
                raise ValueError(f"{self.path}: ends before row {first + len(rows)} of {self.rows} (truncated)")
            buffer[done : done + len(chunk)] = chunk
            done += len(chunk)

    def write(self, first: int, rows: np.ndarray) -> None:
        """Write ``rows`` to the file's rows from ``first`` on."""
        buffer, offset, done = memoryview(np.ascontiguousarray(rows)).cast("B"), self.offset + first * self.row_bytes, 0
        while done < len(buffer):
            done += os.pwrite(self.stream.fileno(), buffer[done : done + IO_BYTES], offset + done)

    def __del__(self) -> None:
        if hasattr(self, "stream"):  # not when open() failed
            self.stream.close()
