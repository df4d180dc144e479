"""The one exception type for bad user input: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input a user can fix (a missing file, an impossible option): no traceback is shown."""
