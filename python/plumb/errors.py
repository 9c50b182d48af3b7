"""Exception types shared across plumb."""


class PlumbError(Exception):
    """Base class of plumb's own errors."""


class InputError(PlumbError, ValueError):
    """A user-supplied argument or file is malformed; the message names it and what was expected."""
