"""NTP vs NITP on the demo corpus, end to end: train both, measure both, plot, tabulate.

    python examples/demo_compare/run.py --out runs/compare             # 2-core CPU
    python examples/demo_compare/run.py --out runs/compare --gpu-moe   # small MoE on 1+ GPUs

1. Trains the NTP baseline (`--no-nitp`) and the NITP model with the same model, seed and data
   order (the same flags but `--nitp`), each logging `effective_rank` / `pair_cosine` every few
   iterations and the validation LM loss into `OUT/{ntp,nitp}/train.jsonl`. Each run saves into
   `OUT/<run>/ckpt` and resumes from it, so an interrupted comparison continues where it stopped.
2. Loads both final checkpoints and measures, on the same fixed held-out batches (the runs'
   validation split), the effective rank and pair cosine of the final hidden states (library
   metrics, `megatron_nitp/evaluation/representations.py`), plus the App. E offline probe.
3. Writes `OUT/compare.json` ({"ntp": {...}, "nitp": {...}}), `OUT/compare.md` (final values) and
   `OUT/compare.png` (paper panels: (a) effective rank, (b) pair cosine, (c) NITP loss, (d) LM
   validation loss; NTP vs NITP overlaid).
"""

import argparse
import json
import math
import os
import shlex
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from megatron_nitp.evaluation.runs import (HeldOut, read_train_log, run_and_exit,  # noqa: E402
                                          run_concurrently, threads_per_job,
                                          write_json_atomic)

# A small dense GPT (4 x 128, SwiGLU, RoPE, tied embeddings, 4096-token SentencePiece vocab):
# ~1.3M parameters incl. embeddings. Target layer 1 of 4 (the paper's ~20% depth rule), lambda 1.
# 2000 iterations x 1024 tokens (~0.9 epoch of the demo corpus): the two runs side by side take
# ~20 min on an idle 2-core CPU; 120 iterations ended inside the early collapse (docs/demo_results).
CPU_DENSE = dict(
    script="pretrain_gpt_nitp.py",
    flags="--num-layers 4 --hidden-size 128 --num-attention-heads 4 --seq-length 128 "
          "--micro-batch-size 8 --lr 2e-3 --min-lr 2e-4 --lr-decay-style cosine "
          "--weight-decay 0.1 --clip-grad 1.0 --nitp-target-layer 1 --nitp-loss-weight 1.0",
    iters=2000, warmup=12, metrics_interval=5, eval_interval=20, eval_iters=4,
    eval_batches=8, eval_micro_batch_size=8, per_topic=30,
)
# A small MoE for GPUs (1 dense + 7 MoE layers of 16 experts top-2 + a shared expert, d 512,
# bf16; ~0.11B total, 36M active with the 4096-token demo vocabulary). Target layer 2 of 8.
GPU_MOE = dict(
    script="pretrain_moe_nitp.py",
    flags="--num-layers 8 --hidden-size 512 --num-attention-heads 8 --group-query-attention "
          "--num-query-groups 4 --seq-length 1024 --micro-batch-size 8 --global-batch-size 64 "
          "--num-experts 16 --moe-router-topk 2 --moe-ffn-hidden-size 512 "
          "--moe-shared-expert-intermediate-size 1024 --moe-layer-freq ([0]*1+[1]*7) "
          "--moe-aux-loss-coeff 0.001 --untie-embeddings-and-output-weights --bf16 "
          "--lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine --nitp-target-layer 2 "
          "--nitp-loss-weight 1.0",
    iters=2000, warmup=100, metrics_interval=20, eval_interval=200, eval_iters=10,
    eval_batches=16, eval_micro_batch_size=8, per_topic=60,
)
# For the test suite: seconds, not minutes. Checks the plumbing, not the effect.
TINY = dict(
    script="pretrain_gpt_nitp.py",
    flags="--num-layers 2 --hidden-size 32 --num-attention-heads 2 --seq-length 32 "
          "--micro-batch-size 4 --lr 2e-3 --nitp-target-layer 1",
    iters=20, warmup=2, metrics_interval=5, eval_interval=10, eval_iters=1,
    eval_batches=2, eval_micro_batch_size=4, per_topic=4,
)
# Every preset's architecture and optimiser, set explicitly (the defaults are Megatron-LM's:
# LayerNorm, GeLU MLP, learned positions, biases, dropout 0.1, beta2 0.999, weight decay 0.01).
ARCH = ("--normalization RMSNorm --norm-epsilon 1e-6 --swiglu --position-embedding-type rope "
        "--disable-bias-linear --attention-dropout 0 --hidden-dropout 0 --adam-beta2 0.95 "
        "--num-workers 0 ")
CPU_DENSE["flags"] = ARCH + "--ffn-hidden-size 512 " + CPU_DENSE["flags"]
GPU_MOE["flags"] = (ARCH + "--ffn-hidden-size 2048 --weight-decay 0.1 --moe-router-pre-softmax "
                    "--moe-token-dispatcher-type alltoall " + GPU_MOE["flags"])
TINY["flags"] = (ARCH + "--ffn-hidden-size 128 --weight-decay 0.1 --lr-decay-style cosine "
                 + TINY["flags"])
RUNS = ("ntp", "nitp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--gpu-moe", action="store_true", help="the GPU MoE variant")
    p.add_argument("--tiny", action="store_true", help="CI-sized model (plumbing only)")
    p.add_argument("--iters", type=int, default=None, help="training iterations (per run)")
    p.add_argument("--seed", type=int, default=1234, help="seed shared by both runs")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes per run (torchrun when > 1, e.g. GPUs)")
    p.add_argument("--extra", default="",
                   help="extra training flags for both runs, overriding the preset's "
                        "(e.g. '--hidden-size 192 --lr-warmup-iters 200')")
    p.add_argument("--nitp-extra", default="",
                   help="extra flags for the NITP run only (e.g. '--nitp-loss-weight 0.5')")
    p.add_argument("--no-probe", action="store_true", help="skip the App. E offline probe")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at the same time (default: 2 on CPU with --nproc 1, "
                        "else 1)")
    p.add_argument("--progress-interval", type=float, default=30.0,
                   help="seconds between progress lines")
    args = p.parse_args(argv)
    if args.jobs is None:
        args.jobs = 2 if args.nproc == 1 and not args.gpu_moe else 1
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.iters is not None and args.iters < 1:
        p.error(f"--iters must be >= 1, got {args.iters}")
    return args


def _preset(args):
    return TINY if args.tiny else GPU_MOE if args.gpu_moe else CPU_DENSE


def training_command(args, run: str, run_dir: str):
    preset = _preset(args)
    iters = args.iters or preset["iters"]
    warmup = min(preset["warmup"], max(iters // 10, 1))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={args.nproc}"] if args.nproc > 1 else [sys.executable])
    ckpt = os.path.join(run_dir, "ckpt")
    cmd = launcher + [os.path.join(REPO, preset["script"]), "--demo-data"]
    cmd += shlex.split(preset["flags"])
    cmd += ["--nitp" if run == "nitp" else "--no-nitp"]
    cmd += ["--train-iters", str(iters), "--lr-warmup-iters", str(warmup),
            "--seed", str(args.seed),
            "--nitp-metrics-interval", str(preset["metrics_interval"]),
            "--eval-interval", str(preset["eval_interval"]),
            "--eval-iters", str(preset["eval_iters"]), "--log-interval", "1",
            "--log-jsonl", os.path.join(run_dir, "train.jsonl"),
            "--save", ckpt, "--load", ckpt, "--save-interval", str(max(iters // 4, 1))]
    # Last, so that they override the preset (argparse keeps the last value of a flag).
    cmd += shlex.split(args.extra) + (shlex.split(args.nitp_extra) if run == "nitp" else [])
    return cmd


def _done_path(args, run):
    return os.path.join(args.out, run, "done.json")


def train_all(args) -> dict:
    """Train every run without a `done.json`, `--jobs` at a time (on a CPU: side by side with
    cpus/jobs threads each); returns {run: {iters, seconds, ...}}."""
    infos, tasks, commands = {}, [], {}
    for run in RUNS:
        if os.path.isfile(_done_path(args, run)):
            print(f"[{run}] already trained ({_done_path(args, run)})", flush=True)
            infos[run] = json.load(open(_done_path(args, run)))
            continue
        run_dir = os.path.join(args.out, run)
        commands[run] = training_command(args, run, run_dir)
        tasks.append((run, commands[run], os.path.join(run_dir, "train.log")))
    jobs = max(1, min(args.jobs, len(tasks)))

    def done(run, code, seconds):
        infos[run] = {"iters": args.iters or _preset(args)["iters"], "seconds": round(seconds, 1),
                      "command": shlex.join(commands[run]),
                      "concurrent_runs": jobs}
        write_json_atomic(_done_path(args, run), infos[run])
        print(f"[{run}] trained in {seconds:.0f} s", flush=True)

    run_concurrently(tasks, jobs, cwd=REPO, env=dict(os.environ, **threads_per_job(jobs)),
                     progress_interval=args.progress_interval, on_done=done,
                     stop_on_failure=True)
    return infos


def measure(args) -> dict:
    """Both final checkpoints, one after the other in this process, on the same batches."""
    from megatron_nitp.evaluation import probe

    preset = _preset(args)
    held_out = HeldOut(preset["eval_batches"], preset["eval_micro_batch_size"])
    extra = None if args.no_probe else (
        lambda enc: {"probe": probe.offline_probe(enc, per_topic=preset["per_topic"])})
    results = {}
    for run in RUNS:
        path = os.path.join(args.out, run, "representations.json")
        if os.path.isfile(path):
            results[run] = json.load(open(path))
            continue
        start = time.time()
        rep = held_out.measure(os.path.join(args.out, run, "ckpt"), extra)
        rep["seconds"] = round(time.time() - start, 1)
        write_json_atomic(path, rep)
        results[run] = rep
        print(f"[{run}] measured: effective rank {rep['geometry']['effective_rank']:.2f}, "
              f"pair cosine {rep['geometry']['pair_cosine']:.4f} ({rep['seconds']:.0f} s)",
              flush=True)
    return results


def summarise(args, trained, measured) -> dict:
    out = {}
    for run in RUNS:
        train, valid = read_train_log(os.path.join(args.out, run, "train.jsonl"))
        geo = measured[run]["geometry"]
        last_metrics = [r for r in train if r.get("effective_rank") is not None]
        rec = {
            "iterations": train[-1]["iteration"],
            "train_seconds": trained[run]["seconds"],
            "valid_lm_loss": valid[-1]["lm_loss"] if valid else None,
            "train_lm_loss": train[-1]["lm_loss"],
            "effective_rank": geo["effective_rank"],
            "pair_cosine": geo["pair_cosine"],
            "eval_tokens": geo["num_tokens"],
            "train_effective_rank_last": last_metrics[-1]["effective_rank"] if last_metrics
            else None,
            "train_pair_cosine_last": last_metrics[-1]["pair_cosine"] if last_metrics else None,
        }
        if run == "nitp":
            rec["nitp_loss"] = valid[-1]["nitp_loss"] if valid else None
            rec["train_nitp_loss"] = train[-1]["nitp_loss"]
        p = measured[run].get("probe")
        if p:
            rec["probe_topic_accuracy"] = p["topic_classification"][
                "logistic_regression_accuracy"]
            rec["probe_topic_nearest_centroid"] = p["topic_classification"][
                "nearest_centroid_accuracy"]
            rec["probe_retrieval_recall_at_1"] = p["half_document_retrieval"]["recall_at_1"]
        out[run] = rec
    return out


def _fmt(v, nd=4):
    return "—" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def markdown(summary, args) -> str:
    ntp, nitp = summary["ntp"], summary["nitp"]
    rows = [("LM validation loss", "valid_lm_loss", 4, "lower is better"),
            ("effective rank (held-out)", "effective_rank", 2, "paper: NITP higher"),
            ("pair cosine (held-out)", "pair_cosine", 4, "paper: NITP lower"),
            ("NITP loss (held-out)", "nitp_loss", 4, "1 - cos(P(h_t), z_{t+1})"),
            ("probe: topic accuracy (log. reg.)", "probe_topic_accuracy", 3, "App. E probe"),
            ("probe: topic accuracy (centroid)", "probe_topic_nearest_centroid", 3, ""),
            ("probe: half-doc recall@1", "probe_retrieval_recall_at_1", 3, ""),
            ("training time (s)", "train_seconds", 0, "")]
    lines = [f"Final values after {ntp['iterations']} iterations "
             f"(`{' '.join(sys.argv[1:]) or '--out ' + args.out}`); geometry on "
             f"{ntp['eval_tokens']} held-out tokens, the same for both models.", "",
             "| metric | NTP | NITP | NITP vs NTP | note |", "| --- | ---: | ---: | ---: | --- |"]
    for name, key, nd, note in rows:
        a, b = ntp.get(key), nitp.get(key)
        delta = ""
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a:
            delta = f"{100 * (b - a) / abs(a):+.1f}%"
        fa = "—" if a is None else (f"{a:.{nd}f}" if nd else f"{a:.0f}")
        fb = "—" if b is None else (f"{b:.{nd}f}" if nd else f"{b:.0f}")
        lines.append(f"| {name} | {fa} | {fb} | {delta} | {note} |")
    return "\n".join(lines) + "\n"


def plot(args, summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"ntp": "tab:blue", "nitp": "tab:red"}
    labels = {"ntp": "NTP", "nitp": "NITP"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    (a, b), (c, d) = axes
    for run in RUNS:
        train, valid = read_train_log(os.path.join(args.out, run, "train.jsonl"))
        m = [r for r in train if r.get("effective_rank") is not None]
        it = [r["iteration"] for r in m]
        kw = dict(color=colors[run], label=labels[run])
        a.plot(it, [r["effective_rank"] for r in m], **kw)
        b.plot(it, [r["pair_cosine"] for r in m], **kw)
        last = summary[run]["iterations"]
        a.scatter([last], [summary[run]["effective_rank"]], marker="*", s=160,
                  color=colors[run], edgecolor="k", zorder=5)
        b.scatter([last], [summary[run]["pair_cosine"]], marker="*", s=160,
                  color=colors[run], edgecolor="k", zorder=5)
        d.plot([r["iteration"] for r in train], [r["lm_loss"] for r in train],
               color=colors[run], alpha=0.25, lw=0.8)
        d.plot([r["iteration"] for r in valid], [r["lm_loss"] for r in valid], marker="o",
               **kw)
        if run == "nitp":
            xs = [r["iteration"] for r in train if r.get("nitp_loss") is not None]
            ys = [r["nitp_loss"] for r in train if r.get("nitp_loss") is not None]
            c.plot(xs, ys, color=colors[run], alpha=0.3, lw=0.8, label="NITP (train, raw)")
            c.plot(xs, _ema(ys, 0.9), color=colors[run], label="NITP (train, EMA 0.9)")
            vx = [r["iteration"] for r in valid if r.get("nitp_loss") is not None]
            c.plot(vx, [r["nitp_loss"] for r in valid if r.get("nitp_loss") is not None],
                   "o", color="k", label="NITP (valid)")
    a.set_yscale("log")  # the early collapse spans two decades; the late gap is small
    a.set_title("(a) effective rank of last hidden states (log scale)")
    b.set_title("(b) average pair cosine")
    c.set_title("(c) NITP loss  1 - cos(P(h_t), z_{t+1})")
    d.set_title("(d) LM loss (dots: validation; faint: train)")
    for ax in (a, b, c, d):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    a.text(0.02, 0.02, "lines: training micro-batch; stars: final, held-out batches",
           transform=a.transAxes, fontsize=7)
    valid_losses = [x["valid_lm_loss"] for x in summary.values() if x["valid_lm_loss"]]
    if valid_losses:
        d.set_ylim(min(valid_losses) - 0.3, min(valid_losses) + 3.0)
    fig.suptitle(f"NTP vs NITP on the demo corpus ({summary['ntp']['iterations']} iterations)")
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=110)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def _ema(values, beta):
    out, m = [], None
    for v in values:
        m = v if m is None else beta * m + (1 - beta) * v
        out.append(m)
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    trained = train_all(args)
    measured = measure(args)
    summary = summarise(args, trained, measured)
    for run in RUNS:
        for k, v in summary[run].items():
            if isinstance(v, float) and not math.isfinite(v):
                print(f"warning: {run} {k} is not finite", flush=True)
    write_json_atomic(os.path.join(args.out, "compare.json"), summary)
    md = markdown(summary, args)
    with open(os.path.join(args.out, "compare.md"), "w") as f:
        f.write(md)
    plot(args, summary, os.path.join(args.out, "compare.png"))
    print(md)
    print(f"wrote {args.out}/compare.json, compare.md, compare.png "
          f"({time.time() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    run_and_exit(main)
