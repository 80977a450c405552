"""When a run stops before --train-iters: too many non-finite steps in a row (--max-bad-steps,
exit 3), or an exit condition (--exit-signal-handler's signal or Ctrl-C, --exit-duration-in-mins,
--exit-interval; exit 0). Every rank reaches the same verdict (the time and signal checks are
reduced over all ranks), so all of them save and stop at the same iteration.
"""

import signal
import time
from dataclasses import dataclass
from typing import Callable, Optional


class SecondInterrupt(KeyboardInterrupt):
    """Ctrl-C again while --exit-signal-handler is already saving: stop now."""


@dataclass(frozen=True)
class Stop:
    reason: str
    code: int  # the process's exit status


class StopPolicy:
    def __init__(self, args, start_time: float, any_rank: Callable[[bool], bool], log):
        self.args, self.start_time, self.any_rank, self.log = args, start_time, any_rank, log
        self.signal = None
        self.bad_in_a_row = 0

    def install_signal_handlers(self):
        if self.args.exit_signal_handler:
            for sig in {signal.Signals(self.args.exit_signal), signal.SIGINT}:
                signal.signal(sig, self._on_exit_signal)

    def _on_exit_signal(self, signum, _frame):
        """Finish the step, save, exit 0; a second Ctrl-C means stop now (exit 130)."""
        if self.signal and signum == signal.SIGINT:
            raise SecondInterrupt
        self.signal = signal.Signals(signum).name  # no print here: not reentrant

    def after_step(self, iteration: int, ok: bool, overflow_scale=None) -> Optional[Stop]:
        """A skipped (non-finite) step: warn; too many in a row: stop. `overflow_scale`: the
        loss scaler skipped the step (fp16 / --loss-scale) and backed off to this scale; not a
        bad step, as in Megatron-LM."""
        if overflow_scale is not None:
            self.bad_in_a_row = 0
            self.log(f"notice: gradient overflow at iteration {iteration}: step skipped, loss "
                     f"scale now {overflow_scale:.1f}")
            return None
        self.bad_in_a_row = 0 if ok else self.bad_in_a_row + 1
        if ok:
            return None
        n, limit = self.bad_in_a_row, self.args.max_bad_steps
        self.log(f"warning: non-finite loss or gradient at iteration {iteration}: "
                 f"step skipped ({n} in a row)")
        if n < limit:
            return None
        self.log(f"error: {n} consecutive non-finite steps (--max-bad-steps {limit}); stopping")
        return Stop("--max-bad-steps", 3)

    def due(self, iteration: int) -> Optional[Stop]:
        """The exit conditions, checked after the step's evaluation and save."""
        a = self.args
        if a.exit_signal_handler and self.any_rank(bool(self.signal)):
            return Stop(self.signal or "a signal on another rank", 0)
        if a.exit_duration_in_mins and self.any_rank(
                (time.time() - self.start_time) / 60 > a.exit_duration_in_mins):
            return Stop("--exit-duration-in-mins", 0)
        if a.exit_interval and iteration % a.exit_interval == 0:
            return Stop("--exit-interval", 0)
        return None
