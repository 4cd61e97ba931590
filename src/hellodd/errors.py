"""The one exception type that reaches the user as a single line and exit code 2."""


class UserError(Exception):
    """Bad input: a missing file, a malformed folder, an impossible option.

    The CLI prints ``hellodd: error: <message>`` and exits with code 2; no traceback.
    The message must name the file or option at fault.
    """
