"""Run ids: they name a run's row and its folder under ``output.dir``, so one rule for all of them (config, CLI,
flows, studies), checked before anything starts.

    check_run_id("hybrid-s0")          # returned as it is
    check_run_id("../../tmp/x")        # ConfigError: letters, digits, '.', '_' and '-' only
"""

from __future__ import annotations

import re

from hbir.core.errors import ConfigError, shorten

RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RULE = "1 to 100 letters, digits, '.', '_' or '-', starting with a letter or digit, e.g. hybrid-s0"


def check_run_id(run_id: object, what: str = "run id") -> str:
    """``run_id`` if it follows the rule (``RUN_ID``), else ConfigError naming ``what`` and the rule."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ConfigError(f"{what} {shorten(run_id)} is not allowed: {RULE}")
    return run_id
