"""The one base type of the errors a user can fix: a flag, a file or a combination found bad
(before any work where possible). The message is one line that names the flag or file and what
would be valid; the entry points print it as `error: <message>` and exit 2, without a traceback
(`--debug` shows it).

Each layer has its subclass, which also keeps the built-in type that callers already catch:
ConfigError and NITPConfigError (ValueError), CheckpointError (RuntimeError), ConversionError,
and DataArgumentError (SystemExit, so that a tool that does not catch it still ends with its one
line and a non-zero status).
"""


class UserError(Exception):
    """Bad user input; str(error) is the one line to show."""
