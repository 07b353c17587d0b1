"""The one exception type that means "bad input from a person"."""


class SeqtwinsError(Exception):
    """A problem with the user's input, files or settings.

    The message is one line that names the file, row or setting and what to do.
    The CLI prints it without a traceback and exits with code 2.
    """
