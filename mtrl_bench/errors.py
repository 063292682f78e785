"""User-facing errors: the CLI prints their message as one line and exits non-zero."""


class UserError(Exception):
    """Bad input from the user (unknown name, missing or corrupt file, bad flag).

    The message must say what was wrong and, where there is a closed set, what is valid.
    """


class DatasetError(UserError):
    """A dataset file is missing, truncated, corrupt or does not match what was asked."""


class RunLocked(UserError):
    """Another process holds the run directory's lock (exit status 75, "try again later")."""

    exit_code = 75


class Diverged(UserError):
    """Training produced a non-finite loss or gradient; nothing non-finite was saved."""

    exit_code = 3
