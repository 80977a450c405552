"""Pieces shared by the experiment drivers: `examples/demo_compare/run.py`,
`examples/ablations/run_grid.py` and `tools/eval_representations.py`.

- `write_json_atomic`: result files appear whole or not at all (their existence marks a finished
  run, so a resumed driver can skip it).
- `read_train_log`: a run's JSONL log split into training and validation records by iteration;
  after a resume the re-logged iterations replace the earlier ones.
- `HeldOut`: loads finished checkpoints one after the other into this process and measures each
  on the same held-out micro-batches (built once, from the first checkpoint's validation split).
- `run_concurrently`: training subprocesses a few at a time, with their progress.
- `run_and_exit`: a driver's `main()` that leaves no process group behind.
"""

import json
import os
import shlex
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple


def write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def read_train_log(path: str) -> Tuple[List[dict], List[dict]]:
    """(training records, validation records), each sorted by iteration; the last record of an
    iteration wins (a resumed run logs the iterations after its checkpoint again)."""
    train, valid = {}, {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                (valid if rec.get("split") == "valid" else train)[rec["iteration"]] = rec
    return [train[i] for i in sorted(train)], [valid[i] for i in sorted(valid)]


class HeldOut:
    """Measures checkpoints on one fixed set of held-out micro-batches (App. D geometry).

    `micro_batch_size=None` takes the first checkpoint's. `extra(encoder) -> dict` adds more
    measurements made with the same loaded model (e.g. the App. E probe) under its own keys.
    """

    def __init__(self, num_batches: int, micro_batch_size: Optional[int] = None):
        self.num_batches, self.micro_batch_size, self.batches = num_batches, micro_batch_size, None

    def measure(self, ckpt_dir: str,
                extra: Optional[Callable[[object], Dict[str, object]]] = None) -> dict:
        from ..parallel.distributed import destroy_distributed_model_parallel
        from .representations import MegatronEncoder, representation_geometry, validation_batches

        encoder = MegatronEncoder(ckpt_dir)
        try:
            if self.batches is None:
                self.batches = validation_batches(
                    encoder.args, self.num_batches,
                    self.micro_batch_size or encoder.args.micro_batch_size, encoder.tokenizer)
            out = {"iteration": encoder.args.iteration,
                   "geometry": representation_geometry(encoder, self.batches)}
            if extra is not None:
                out.update(extra(encoder))
            return out
        finally:
            del encoder
            destroy_distributed_model_parallel()


def last_progress_line(log_path: str) -> Optional[str]:
    """The last `iter N/M | ...` line of a training log (None before the first one)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(os.path.getsize(log_path) - 4096, 0))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    lines = [ln.strip() for ln in lines if ln.lstrip().startswith("iter ")]
    return lines[-1] if lines else None


def threads_per_job(jobs: int) -> Dict[str, str]:
    """OMP_NUM_THREADS for `jobs` CPU processes side by side (unless the user set it): on a small
    CPU, two 1-thread runs get more done than one 2-thread run (small matmuls scale poorly)."""
    if jobs <= 1 or "OMP_NUM_THREADS" in os.environ:
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}


def run_concurrently(tasks: Sequence[Tuple[str, List[str], str]], jobs: int, *, cwd: str,
                     env: Optional[Dict[str, str]] = None, progress_interval: float = 30.0,
                     on_done: Optional[Callable[[str, int, float], None]] = None,
                     stop_on_failure: bool = False) -> Dict[str, Tuple[int, float]]:
    """Runs `(name, command, log_path)` tasks, at most `jobs` at a time, output appended to
    each log. Every `progress_interval` s prints each running task's latest iteration line.
    `on_done(name, exit_code, seconds)` is called as each task ends (in this thread, so it may
    do work, e.g. measure the finished run, while the others keep training). With
    `stop_on_failure` the first failure terminates the rest and raises SystemExit.
    Returns {name: (exit code, seconds)}."""
    pending, running, results = list(tasks), {}, {}
    last_print = time.time()
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                name, cmd, log_path = pending.pop(0)
                os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
                log = open(log_path, "a")
                print(f"[{name}] running: {shlex.join(cmd)}\n[{name}] log: {log_path}",
                      flush=True)
                proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log,
                                        stderr=subprocess.STDOUT)
                running[name] = (proc, log, log_path, time.time())
            time.sleep(0.5)
            if time.time() - last_print >= progress_interval:
                last_print = time.time()
                for name, (_, _, log_path, _) in running.items():
                    line = last_progress_line(log_path)
                    if line:
                        print(f"[{name}] {line}", flush=True)
            for name in [n for n, r in running.items() if r[0].poll() is not None]:
                proc, log, log_path, start = running.pop(name)
                log.close()
                results[name] = (proc.returncode, time.time() - start)
                if proc.returncode != 0 and stop_on_failure:
                    raise SystemExit(f"[{name}] training failed (exit {proc.returncode}); "
                                     f"see {log_path}")
                if on_done is not None:
                    on_done(name, proc.returncode, results[name][1])
    finally:
        for proc, log, _, _ in running.values():  # only on an error or an interrupt
            proc.terminate()
            proc.wait()
            log.close()
    return results


def run_and_exit(main: Callable[[], int]) -> None:
    code = main()
    import torch

    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(code)
