"""The run's one logger: rank 0 prints, the other ranks stay quiet (every rank reaches the same
verdicts, so one copy of each line is enough).

`rank()` is the one place the global rank is read: the process group once it exists, before that
the launcher's RANK (torchrun) or SLURM_PROCID (srun).
"""

import logging
import os
import sys

LOGGER_NAME = "megatron_nitp"


def rank() -> int:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


class _RankZero(logging.Filter):
    def filter(self, record):
        return rank() == 0


class _Stdout(logging.StreamHandler):
    """Whatever sys.stdout is at the time of the line (pytest's capture swaps it), flushed:
    a launcher's log interleaves the ranks' output by line."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, _value):
        pass

    def emit(self, record):
        super().emit(record)
        self.flush()


def get_logger() -> logging.Logger:
    """The project's logger, set up on first use: message only, on stdout, rank 0."""
    log = logging.getLogger(LOGGER_NAME)
    if not log.handlers:
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_RankZero())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False  # the root logger's handlers (if any) would print it again
    return log


def info(msg: str):
    """The default `log` of the functions that report progress: rank 0's stdout."""
    get_logger().info(msg)


def set_logging_level(level):
    """--logging-level (else MEGATRON_LOGGING_LEVEL), as Megatron-LM: the level of Python's
    root logger (megatron-core's modules log there) and of this project's logger."""
    env = os.environ.get("MEGATRON_LOGGING_LEVEL")
    if level is None and env is not None:
        level = int(env)
    if level is None:
        return
    logging.getLogger().setLevel(level)
    get_logger().setLevel(level)
    get_logger().debug(f"logging level {level}")
