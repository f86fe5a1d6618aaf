"""What the benchmarks that measure each variant in a fresh process share: running a variant in a subprocess of the
same script, and that process's own peak memory."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path


def run_in_subprocess(script: str, variant: str, workdir: Path, python: str = sys.executable) -> dict:
    """One variant's measurements, from a fresh Python process (``python``, by default this one) running ``script``
    with this process's arguments plus ``--variant`` and ``--workdir``; it prints them as JSON on its last line."""
    command = [python, script, *sys.argv[1:], "--variant", variant, "--workdir", str(workdir)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{variant} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB.

    Linux's ``ru_maxrss`` survives ``execve``: a child spawned by ``subprocess`` (vfork) starts with its parent's
    peak. ``VmHWM`` is the peak of the process's own address space since ``execve``.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux (bytes on macOS)
