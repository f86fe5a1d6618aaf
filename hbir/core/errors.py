"""User-facing errors: each one carries a message a user can act on and a process exit code.

The CLI prints ``error: <message>`` and exits with ``exit_code``; it never shows a traceback for these.
"""


class HbirError(Exception):
    """A mistake in what the user gave us (config, data, SQL), as opposed to a bug."""

    exit_code = 1


class ConfigError(HbirError):
    """The configuration is invalid: unknown key, wrong type, bad profile or file."""

    exit_code = 2


class DataError(HbirError):
    """A data file cannot be read into the canonical tables (malformed, wrong shape, wrong types)."""

    def __init__(self, file: str, problem: str) -> None:
        self.file = str(file)
        self.problem = problem
        super().__init__(f"{self.file}: {problem}")


class ContractError(HbirError):
    """One or more data contracts (Great Expectations suites) failed."""


class QueryError(HbirError):
    """A SQL query was refused (it would write) or failed."""


class QueryInterrupted(QueryError):
    """The user stopped a query (Ctrl-C): the shell's exit code for SIGINT."""

    exit_code = 130


def shorten(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: an offending value in a message may be 100k characters long."""
    if hasattr(value, "item"):  # numpy scalars from pandas / Great Expectations
        value = value.item()
    if isinstance(value, float) and value != value:  # pandas' stand-in for a missing value
        return "null"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
