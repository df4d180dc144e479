"""The one exception type of the data package: bad data or a data option a user can fix.

``sequences`` stands alone (it imports nothing from ``tncn``); the ``tncn`` command line prints a
``DataError`` as one line on stderr and exits with status 2, as it does its own ``DataError``.
"""


class DataError(Exception):
    """A missing or unreadable file, a malformed data set, an impossible batch size: no traceback."""
