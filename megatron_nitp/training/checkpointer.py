"""When the run saves (--save): every --save-interval, before a --rampup-batch-size step grows
the batch, before an early stop, and at the end;
never twice for one iteration."""


class Checkpointer:
    def __init__(self, args, save, iteration: int):
        """save(iteration): writes the checkpoint (Trainer._save)."""
        self.args, self._save, self.last_saved = args, save, iteration

    def _write(self, iteration):
        self._save(iteration)
        self.last_saved = iteration

    def maybe_save(self, iteration: int):
        a = self.args
        if a.save and a.save_interval and iteration % a.save_interval == 0:
            self._write(iteration)

    def save_before_batch_change(self, iteration: int):
        """--rampup-batch-size: Megatron-LM saves when the number of microbatches changes."""
        if self.args.save and self.last_saved != iteration:
            self._write(iteration)

    def save_before_stop(self, iteration: int):
        """An early stop keeps its progress. After non-finite steps too: the parameters were
        never updated by them, so this is the last good state."""
        if self.args.save and self.last_saved != iteration:
            self._write(iteration)

    def save_at_end(self, iteration: int):
        # --train-iters 0 --save: the initialised (or --finetune-loaded) model as iteration 0,
        # a seed checkpoint that any layout can --load --finetune.
        a = self.args
        if a.save and (self.last_saved != iteration or iteration == a.train_iters == 0):
            self._write(iteration)
