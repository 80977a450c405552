"""Whether a process on this host is alive: the owner check of locks and temporaries that a
killed run (SIGKILL, OOM) leaves behind without a chance to clean up."""

import os


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True
