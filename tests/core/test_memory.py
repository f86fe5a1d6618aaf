"""A stage's freed memory is given back to the system when it ends, so the next stage does not start above it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from hbir.core.memory import _malloc_trim, gives_back_freed_memory

needs_glibc = pytest.mark.skipif(_malloc_trim() is None, reason="malloc_trim is glibc's")

# A stage that allocates 200 MB in 1 kB blocks and frees them all but the last one, which keeps glibc from trimming
# the heap's top by itself: the freed pages stay in the process unless they are given back.
STAGE = """
import sys
from pathlib import Path
from hbir.core.memory import gives_back_freed_memory

def anon_mib():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024

def stage():
    blocks = [bytes(1000) for _ in range(200_000)]
    kept = bytes(1000)
    del blocks
    return kept

before = anon_mib()
kept = (gives_back_freed_memory(stage) if sys.argv[1] == "give-back" else stage)()
print(anon_mib() - before)
"""


def rss_left_by_stage(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(STAGE), mode], capture_output=True, text=True, check=True, timeout=120
    )
    return float(done.stdout.strip())


@needs_glibc
def test_a_stage_that_gives_back_freed_memory_leaves_the_process_where_it_began():
    assert rss_left_by_stage("keep") > 150  # what glibc keeps of 200 MB freed
    assert rss_left_by_stage("give-back") < 20


def test_the_stage_returns_its_value_and_raises_its_error():
    assert gives_back_freed_memory(lambda x: x + 1)(1) == 2

    @gives_back_freed_memory
    def failing():
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        failing()
