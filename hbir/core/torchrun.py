"""Whether this process is a rank that torchrun started: its environment says so (read without importing torch, so
the CLI can ask before anything heavy is loaded)."""

import os

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def under_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)
