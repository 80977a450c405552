"""The paper's ablations (Tables 3, 7, 8 and Fig. 4) as one command: a grid of short runs.

    python examples/ablations/run_grid.py --out runs/ablations [--iters N] [--only a,b] [--list]

Each grid entry is one override file of this directory (target layer, shift, loss type, generic
cosine regularisation, stop-gradient off, start step, no projector, lambda) on top of a small
base (`base/demo_dense.yaml`, repeated `--config`), plus `nitp_default` (the base alone). Files
that change nothing on top of the base (e.g. `loss_cosine`, the default) are aliases of
`nitp_default` and are not run twice.

Per run, `OUT/<name>/result.json` is written atomically at the very end (final training and
validation LM loss, NITP loss, and the effective rank / pair cosine of the final checkpoint on a
fixed set of held-out batches, the same for every run); a run with a result file is finished and
skipped, so the grid is resumable. `OUT/results.md` and `OUT/results.json` tabulate every
finished run.

Start steps: the paper's 1000/2000/3000 are iterations of a ~100k-step run, placed against the
NITP loss's warm-up hump (App. F, ~40-2k steps). A short grid never reaches them, so they are
rescaled to the grid's warm-up: start = value / 2000 x warm-up iterations (1000 -> half the
warm-up); the table shows the step used.
"""

import argparse
import glob
import json
import os
import shlex
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)

from megatron_nitp.evaluation.runs import (HeldOut, read_train_log, run_and_exit,  # noqa: E402
                                          run_concurrently, threads_per_job,
                                          write_json_atomic)

BASE = os.path.join(HERE, "base", "demo_dense.yaml")
DEFAULT = "nitp_default"
PAPER_WARMUP_HUMP = 2000  # App. F: the NITP loss's transient peak ends around 2k steps


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--iters", type=int, default=200, help="iterations per run")
    p.add_argument("--only", default=None, help="comma-separated run names (default: all)")
    p.add_argument("--base", default=BASE, help="base YAML (model and data)")
    p.add_argument("--extra", default="", help="extra training flags for every run")
    p.add_argument("--eval-batches", type=int, default=8, help="held-out batches for geometry")
    p.add_argument("--list", action="store_true", help="print the grid and exit")
    p.add_argument("--jobs", type=int, default=2,
                   help="runs trained at the same time (on a CPU: cpus/jobs threads each)")
    p.add_argument("--progress-interval", type=float, default=30.0,
                   help="seconds between progress lines")
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.iters < 1:
        p.error(f"--iters must be >= 1, got {args.iters}")
    return args


def _warmup(iters):
    return max(1, iters // 10)


def grid(args):
    """[(name, [flags])] in a fixed order; aliases of the default are dropped (noted)."""
    from megatron_nitp.training.arguments import parse_args as parse_train_args

    base_argv = ["--config", args.base] + shlex.split(args.extra)
    base = vars(parse_train_args(base_argv))
    entries, aliases = [(DEFAULT, [])], {}
    for path in sorted(glob.glob(os.path.join(HERE, "*.yaml"))):
        name = os.path.basename(path)[:-5]
        flags = ["--config", path]
        parsed = vars(parse_train_args(base_argv + flags))
        if name.startswith("start_step_"):
            step = round(parsed["nitp_start_step"] / PAPER_WARMUP_HUMP * _warmup(args.iters))
            flags += ["--nitp-start-step", str(step)]
        changed = {k for k in base if k != "config" and base[k] != parsed[k]}
        if not changed and not name.startswith("start_step_"):
            aliases[name] = DEFAULT
            continue
        entries.append((name, flags))
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        known = {n for n, _ in entries} | set(aliases)
        unknown = [n for n in wanted if n not in known]
        if unknown:
            raise SystemExit(f"--only: unknown run(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        wanted = {aliases.get(n, n) for n in wanted}
        entries = [(n, f) for n, f in entries if n in wanted]
    return entries, aliases


def train_command(args, name, flags, run_dir):
    return [sys.executable, os.path.join(REPO, "pretrain_gpt_nitp.py"), "--config", args.base,
            *flags, *shlex.split(args.extra),
            "--train-iters", str(args.iters), "--lr-warmup-iters", str(_warmup(args.iters)),
            "--log-interval", "1", "--nitp-metrics-interval", str(max(1, args.iters // 20)),
            "--eval-interval", str(args.iters), "--eval-iters", "4",
            "--log-jsonl", os.path.join(run_dir, "train.jsonl"),
            "--save", os.path.join(run_dir, "ckpt")]


def _mean_last(records, key, n=10):
    vals = [r[key] for r in records[-n:] if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


def prepare(args, name, flags):
    """The training task of a run, or None when it finished earlier (its result.json exists).
    An interrupted run restarts from scratch: its partial log and checkpoints are removed."""
    run_dir = os.path.join(args.out, name)
    if os.path.isfile(os.path.join(run_dir, "result.json")):
        print(f"[{name}] finished earlier: skipped", flush=True)
        return None
    os.makedirs(run_dir, exist_ok=True)
    for stale in ("train.jsonl", "train.log"):
        if os.path.exists(os.path.join(run_dir, stale)):
            os.remove(os.path.join(run_dir, stale))
    shutil.rmtree(os.path.join(run_dir, "ckpt"), ignore_errors=True)
    return (name, train_command(args, name, flags, run_dir), os.path.join(run_dir, "train.log"))


def finish(args, name, cmd, seconds, held_out):
    """Measures a trained run and writes its result.json (last: its existence means finished)."""
    run_dir = os.path.join(args.out, name)
    train, valid = read_train_log(os.path.join(run_dir, "train.jsonl"))
    geometry = held_out.measure(os.path.join(run_dir, "ckpt"))["geometry"]
    from megatron_nitp.training.checkpoint_io import read_run_config

    nitp = read_run_config(os.path.join(run_dir, "ckpt"))["nitp"]
    result = {
        "name": name, "iters": args.iters, "train_seconds": round(seconds, 1),
        "nitp_config": nitp,
        "train_lm_loss": _mean_last(train, "lm_loss"),
        "valid_lm_loss": valid[-1]["lm_loss"] if valid else None,
        "train_nitp_loss": _mean_last(train, "nitp_loss"),
        "valid_nitp_loss": valid[-1]["nitp_loss"] if valid else None,
        "effective_rank": geometry["effective_rank"],
        "pair_cosine": geometry["pair_cosine"],
        "eval_tokens": geometry["num_tokens"],
        "command": shlex.join(cmd),
    }
    write_json_atomic(os.path.join(run_dir, "result.json"), result)
    print(f"[{name}] done in {seconds:.0f} s: valid LM {result['valid_lm_loss']:.4f}, "
          f"eff. rank {result['effective_rank']:.2f}, pair cos {result['pair_cosine']:.4f}",
          flush=True)
    return result


def _describe(cfg):
    if not cfg["enabled"]:
        return "NTP"
    parts = [f"L{cfg['target_layer']}" if cfg["loss_type"] != "generic_cosine" else "no target",
             cfg["loss_type"], f"λ {cfg['loss_weight']:g}"]
    if cfg["shift"] == 0:
        parts.append("shift 0")
    if not cfg["stop_grad"]:
        parts.append("no stop-grad")
    if cfg["start_step"]:
        parts.append(f"start {cfg['start_step']}")
    if cfg["projector"] == "none":
        parts.append("no projector")
    return ", ".join(parts)


def tabulate(args, aliases):
    results = []
    for path in sorted(glob.glob(os.path.join(args.out, "*", "result.json"))):
        results.append(json.load(open(path)))
    order = {DEFAULT: 0, "ntp_baseline": 1}
    results.sort(key=lambda r: (order.get(r["name"], 2), r["name"]))
    f = lambda v, nd: "—" if v is None else f"{v:.{nd}f}"  # noqa: E731
    lines = ["| run | setting | iters | valid LM loss | train LM loss | NITP loss (valid) | "
             "effective rank | pair cosine |", "| --- | --- | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for r in results:
        lines.append(f"| `{r['name']}` | {_describe(r['nitp_config'])} | {r['iters']} | "
                     f"{f(r['valid_lm_loss'], 4)} | {f(r['train_lm_loss'], 4)} | "
                     f"{f(r['valid_nitp_loss'], 4)} | {f(r['effective_rank'], 2)} | "
                     f"{f(r['pair_cosine'], 4)} |")
    notes = ["", "Effective rank and pair cosine: final checkpoint, the same held-out batches for "
             "every run. NITP loss: 1 - cos for `cosine`; the loss of the named type otherwise "
             "(not comparable across types); for `generic_cosine` it is the mean pair cosine "
             "penalty. Train LM loss: mean of the last 10 iterations."]
    if aliases:
        notes.append("Not run separately (identical to `nitp_default` on this base): "
                     + ", ".join(f"`{a}`" for a in sorted(aliases)) + ".")
    md = "\n".join(lines + notes) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as fh:
        fh.write(md)
    write_json_atomic(os.path.join(args.out, "results.json"),
                      {"runs": {r["name"]: r for r in results}, "aliases": aliases})
    return md


def main(argv=None):
    args = parse_args(argv)
    args.out = os.path.abspath(args.out)
    entries, aliases = grid(args)
    if args.list:
        for name, flags in entries:
            print(f"{name}: {' '.join(flags) or '(base only)'}")
        for a, target in aliases.items():
            print(f"{a}: = {target}")
        return 0
    os.makedirs(args.out, exist_ok=True)
    held_out = HeldOut(args.eval_batches)
    tasks = [t for t in (prepare(args, name, flags) for name, flags in entries) if t]
    commands, failed = {name: cmd for name, cmd, _ in tasks}, []

    def done(name, code, seconds):
        if code != 0:
            print(f"[{name}] FAILED (exit {code}); see {args.out}/{name}/train.log", flush=True)
            failed.append(name)
        else:
            finish(args, name, commands[name], seconds, held_out)

    jobs = max(1, min(args.jobs, len(tasks) or 1))
    run_concurrently(tasks, jobs, cwd=REPO, env=dict(os.environ, **threads_per_job(jobs)),
                     progress_interval=args.progress_interval, on_done=done)
    print(tabulate(args, aliases))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_and_exit(main)
