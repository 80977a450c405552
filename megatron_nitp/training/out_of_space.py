"""Did a failed write run out of room? Disk full, quota, or a file-size limit (`ulimit -f`).

A checkpoint save fails in many layers (torch DCP's writer threads, torch.save's zip writer,
our own JSON files); some keep the OSError, some only its words. checkpointing.save_checkpoint
asks this to turn any of them into one "no space left" line.
"""

import errno

_SPACE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# torch.save's zip writer and torch DCP's workers lose the errno; these are their words for it.
_SPACE_WORDS = ("No space left", "File too large", "Disk quota exceeded", "unexpected pos")


def out_of_space(error) -> bool:
    """Whether a failed save ran out of room (disk full, quota, file-size limit), searching the
    exception's causes and torch DCP's per-rank failures."""
    seen, todo = set(), [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _SPACE_ERRNOS:
            return True
        if any(word in str(e) for word in _SPACE_WORDS):
            return True
        todo += [e.__cause__, e.__context__]
        failures = getattr(e, "failures", None)
        if isinstance(failures, dict):
            todo += [f for f in failures.values() if isinstance(f, BaseException)]
    return False
