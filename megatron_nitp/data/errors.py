"""The one error type of the data layer (bad user input: a flag, a file, found before work
starts) and the output-directory check that raises it."""

from ..errors import UserError


class DataArgumentError(SystemExit, UserError):
    """Bad data input; the message names the flag or file and says what would be valid.

    It derives from SystemExit so that an entry point that does not catch it (a training script,
    every rank of a torchrun launch) still ends with this one line on stderr, a non-zero exit code
    and no traceback. The tools in tools/ catch it and exit with code 2, like argparse.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def ensure_output_directory(prefix: str, flag: str = "--output-prefix") -> str:
    """Creates the directory of an output prefix; DataArgumentError naming `flag` if it cannot be
    created or written. Returns the directory."""
    import os

    directory = os.path.dirname(os.path.abspath(prefix))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise DataArgumentError(f"{flag}: cannot create {directory!r} ({error.strerror})") from None
    if not os.access(directory, os.W_OK):
        raise DataArgumentError(f"{flag}: directory {directory!r} is not writable")
    return directory
