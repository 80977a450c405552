"""Every output path is probed at validation, before any work, without creating anything.

A read-only or mistyped --save would otherwise fail at the first save (after training), a
--tensorboard-dir that is a file at start-up with a traceback. A path that does not exist yet is
fine when its nearest existing ancestor is a writable directory (it is created later).
"""

import os

from .flag_ranges import flag
from .validation import ConfigError

# (dest, what the path must be)
DIRECTORIES = ("save", "tensorboard_dir", "data_cache_path", "wandb_save_dir")
FILES = ("log_jsonl", "plot")


def _nearest_existing(path):
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _writable_dir(directory) -> bool:
    return os.access(directory, os.W_OK | os.X_OK)


def probe(dest, path, is_dir):
    """ConfigError naming the flag when `path` cannot be used as the output it is for."""
    name = flag(dest)
    absolute = os.path.abspath(path)
    if os.path.lexists(absolute):
        if is_dir and not os.path.isdir(absolute):
            raise ConfigError(f"{name} {path}: exists and is not a directory")
        if not is_dir and os.path.isdir(absolute):
            raise ConfigError(f"{name} {path}: is a directory (expected a file path)")
        target = absolute if is_dir else os.path.dirname(absolute)
        if not _writable_dir(target) or (not is_dir and not os.access(absolute, os.W_OK)):
            raise ConfigError(f"{name} {path}: not writable (read-only file system or "
                              "permissions); choose a writable location")
        return
    ancestor = _nearest_existing(absolute)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"{name} {path}: cannot be created, {ancestor} is a file, not a "
                          "directory")
    if not _writable_dir(ancestor):
        raise ConfigError(f"{name} {path}: cannot be created, {ancestor} is not writable "
                          "(read-only file system or permissions)")


def probe_output_paths(args):
    for dest in DIRECTORIES:
        if getattr(args, dest, None):
            probe(dest, getattr(args, dest), is_dir=True)
    for dest in FILES:
        if getattr(args, dest, None):
            probe(dest, getattr(args, dest), is_dir=False)
