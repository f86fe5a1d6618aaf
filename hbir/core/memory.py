"""Memory a stage freed, given back to the system before the next stage starts.

    @gives_back_freed_memory
    def embed_tables(...): ...   # what encoding freed is not kept by the process for the stages after it

The stages of a run share one process. glibc's allocator keeps most of what a stage frees: in the arenas of the
threads that allocated it (ONNX Runtime's, the tokenizer's, DuckDB's, faiss's), and in pages of its heaps that hold
one small live block. The next stage then starts that much higher, and the run's peak is the last stage's peak on
top of everything before it. ``malloc_trim(0)`` hands every wholly free page of every arena back (it takes tens of
milliseconds). Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "malloc_trim", None)


def give_back_freed_memory() -> None:
    """Collect unreachable Python objects, then hand the C heap's free pages back to the system (glibc only)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def gives_back_freed_memory(stage: Callable[P, R]) -> Callable[P, R]:
    """``stage``, followed by ``give_back_freed_memory`` whether it returns or raises."""

    @functools.wraps(stage)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return stage(*args, **kwargs)
        finally:
            give_back_freed_memory()

    return run
