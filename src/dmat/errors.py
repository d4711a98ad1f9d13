"""The one exception type that the CLI turns into a single clear error line."""


class DmatError(Exception):
    """Bad input or a missing prerequisite; the message says what to do about it."""
