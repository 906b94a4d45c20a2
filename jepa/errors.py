"""Errors that mean "the user asked for something that cannot work" (CLI exit code 2)."""


class UserInputError(ValueError):
    """Bad input from the user: a flag, a file or a folder.

    The message is one line that says what is wrong and how to fix it; the CLI prints
    it to stderr and exits with code 2.
    """


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type when it has none), for a
    one-line error that quotes what a library said."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
