"""Fault injection: debug settings that make a run fail on purpose, so that the recovery paths
(non-finite steps, a kill during a save) can be exercised on real runs. Read once per process,
from the environment (every rank of a torchrun/srun job inherits it), off by default:

| variable                          | value                 | effect                                  |
|-----------------------------------|-----------------------|-----------------------------------------|
| MEGATRON_NITP_TEST_NAN_ITERS      | `3,4` (iterations)    | those steps' losses and one gradient    |
|                                   |                       | become NaN (the step is then skipped    |
|                                   |                       | as a diverging one would be)            |
| MEGATRON_NITP_TEST_SLOW_SAVE      | `SECONDS[@ITERATION]` | every save (or ITERATION's) sleeps      |
|                                   |                       | after writing its shards, before the    |
|                                   |                       | rename that publishes it                |

A run with any of them set says so once at start (`debug_notice`).
"""

import os
import time
from dataclasses import dataclass
from typing import FrozenSet, Optional

NAN_ITERS = "MEGATRON_NITP_TEST_NAN_ITERS"
SLOW_SAVE = "MEGATRON_NITP_TEST_SLOW_SAVE"


@dataclass(frozen=True)
class DebugFaults:
    nan_iters: FrozenSet[int] = frozenset()
    slow_save_s: float = 0.0
    slow_save_at: Optional[int] = None  # None: every save

    @classmethod
    def from_env(cls, env=None) -> "DebugFaults":
        env = os.environ if env is None else env
        nan = frozenset(int(x) for x in env.get(NAN_ITERS, "").split(",") if x.strip())
        seconds, _, at = env.get(SLOW_SAVE, "").partition("@")
        return cls(nan, float(seconds) if seconds else 0.0, int(at) if at else None)

    def nan_at(self, iteration: int) -> bool:
        return iteration in self.nan_iters

    def slow_save(self, iteration: int):
        if self.slow_save_s and self.slow_save_at in (None, iteration):
            time.sleep(self.slow_save_s)

    def notice(self) -> Optional[str]:
        on = [n for n, v in ((NAN_ITERS, self.nan_iters), (SLOW_SAVE, self.slow_save_s)) if v]
        return f"notice: debug fault injection on ({', '.join(on)})" if on else None


FAULTS = DebugFaults.from_env()
