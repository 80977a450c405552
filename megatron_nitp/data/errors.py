"""The one error type of the data layer: bad user input (a flag, a file) found before work starts."""


class DataArgumentError(SystemExit):
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
