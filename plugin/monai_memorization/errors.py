"""Exceptions whose message is the one line a user sees."""


class MemorizationError(Exception):
    """Base class: the message is a single line that names the file and the problem."""


class DataValidationError(MemorizationError, ValueError):
    """Bad input data: missing, corrupt, wrongly shaped or otherwise unusable."""


class DetectorError(MemorizationError, ValueError):
    """A detector checkpoint or embedding that cannot be used."""
