"""The one exception type for user mistakes.

A `UsageError` is printed by the CLI as one line and exits with code 2; every other
exception is a bug (shown with its traceback under `--debug`). The message names the
value, what was expected, and where (option, file:line, or string position).
"""


class UsageError(Exception):
    """A bad user input: one line naming the value, the expectation and the place."""


def shown(value, limit: int = 48) -> str:
    """repr() of a user's value, shortened so that an error message stays one readable line."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit - 4]}...{text[0]} ({len(str(value))} characters)"
