"""Errors that mean "the user asked for something that cannot work" (CLI exit code 2)."""


class UserInputError(ValueError):
    """Bad input from the user: a flag, a file or a folder.

    The message is one line that says what is wrong and how to fix it; the CLI prints
    it to stderr and exits with code 2.
    """
