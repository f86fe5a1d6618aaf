"""Who runs a run: the process that started it (host and pid) and when it last wrote. A ``running`` run whose
process is gone (killed, its machine rebooted) is *stale*: ``hbir runs`` shows it so, ``hbir runs --fail-stale``
marks it failed, and starting its id again does that first.

On this host a process is gone when its pid is; on another host (a shared results database) when it has not written
for ``STALE_AFTER_S`` (training writes its steps every 30 s; a long embedding writes nothing).
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

STALE_AFTER_S = 3600.0


def this_process() -> tuple[str, int]:
    """(host, pid) of this process, as the ``runs`` table records an owner."""
    return socket.gethostname(), os.getpid()


def owner_gone(host: str | None, pid: int | None, heartbeat_at: datetime | None, now: datetime) -> bool:
    """Whether the process recorded as a run's owner no longer runs it (module doc)."""
    if host == socket.gethostname() and pid is not None:
        return not _alive(int(pid))
    return heartbeat_at is None or now - heartbeat_at > timedelta(seconds=STALE_AFTER_S)


def describe_owner(host: str | None, pid: int | None) -> str:
    return f"process {pid} on {host}" if host else "an older hbir's process (no owner recorded)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
