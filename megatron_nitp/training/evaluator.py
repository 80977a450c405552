"""When the run evaluates: every --eval-interval iterations, and once more at the end when the
last iteration was not one of them. --eval-iters 0 is Megatron-LM's way to skip evaluation
altogether."""


class Evaluator:
    def __init__(self, args, evaluate_and_log):
        """evaluate_and_log(): runs --eval-iters validation batches and logs them
        (Trainer._log_eval)."""
        self.on = bool(args.eval_interval and args.eval_iters)
        self.interval = args.eval_interval
        self._run = evaluate_and_log

    def due(self, iteration: int) -> bool:
        return self.on and iteration % self.interval == 0

    def maybe_evaluate(self, iteration: int):
        if self.due(iteration):
            self._run()

    def at_end(self, iteration: int):
        if self.on and not self.due(iteration):
            self._run()
