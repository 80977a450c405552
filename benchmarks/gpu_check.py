"""The one-GPU check (issue #17): one prepared script for one NVIDIA H200, under 8 minutes.

  # here (CPU, network): wheels + the CPU reference, both carried to the GPU machine, not committed
  bash benchmarks/prepare_gpu_check.sh
  # on the GPU machine (Python 3.12, torch with CUDA, no megatron-core / TE, no network)
  pip install --no-index --find-links benchmarks/gpu_wheels megatron-core==0.16.1 pyyaml psutil
  python benchmarks/gpu_check.py run --ref benchmarks/gpu_check_ref
  # CPU dry path (tiny shapes; what the test suite runs)
  python benchmarks/gpu_check.py prepare --ref R && python benchmarks/gpu_check.py run --ref R --dry-run

(a) a tiny NITP model trained 2 iterations on CPU and saved (`prepare`), continued for 2 more on
    CUDA, against the CPU continuation of the same checkpoint: max relative LM/NITP loss
    difference (fp32, target < 1e-4);
(b) the same continuation in bf16 on the GPU against fp32 (details file only);
(c) dense 0.5B at the paper's full shape (seq 8192, bf16) and (d) the MoE 1.9B-A0.3B width:
    NTP and NITP built from one seed, alternating steps on the same batches
    (benchmarks/overhead.py): median step time, tokens/s, MFU, peak memory.
Writes benchmarks/results/gpu_check.json with exactly the issue's keys (and the raw numbers to
gpu_check_details.json next to it). Targets: step_time_ratio <= flops_ratio + 0.005,
memory_ratio <= 1.03.
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(__file__))

# (a)/(b): the tiny model of the CLI tests.
TINY = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
        "--seq-length", "64", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--mock-data", "--vocab-size", "255", "--make-vocab-size-divisible-by", "64",
        "--lr", "1e-3", "--lr-warmup-iters", "1", "--nitp", "--nitp-target-layer", "1",
        "--train-iters", "4",
        # set explicitly: the defaults are Megatron-LM's (LayerNorm, GeLU, learned positions, ...)
        "--ffn-hidden-size", "256", "--normalization", "RMSNorm", "--norm-epsilon", "1e-6",
        "--swiglu", "--position-embedding-type", "rope", "--disable-bias-linear",
        "--attention-dropout", "0", "--hidden-dropout", "0", "--adam-beta2", "0.95",
        "--weight-decay", "0.1", "--lr-decay-style", "cosine", "--num-workers", "0",
        "--log-interval", "1", "--eval-iters", "2"]
# Dense bf16 peak of the GPU (tensor cores, no sparsity), for MFU.
PEAK_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12}
# (c)/(d) in the dry path: tiny shapes of the same two families.
DRY_SHAPES = {
    "dense_0.5b": ("dense_0.5b.yaml", dict(num_layers=2, hidden_size=64, ffn_hidden_size=128,
                                           num_attention_heads=4, num_query_groups=2,
                                           kv_channels=16, vocab_size=512, seq_length=32,
                                           nitp_target_layer=1)),
    "moe_1.9b_a0.3b": ("moe_1.9b_a0.3b.yaml", dict(num_layers=2, moe_layer_freq=[0, 1],
                                                   hidden_size=64, num_attention_heads=4,
                                                   num_query_groups=2, kv_channels=16,
                                                   ffn_hidden_size=128, moe_ffn_hidden_size=32,
                                                   moe_shared_expert_intermediate_size=32,
                                                   num_experts=8, moe_router_topk=2,
                                                   vocab_size=512, seq_length=32,
                                                   nitp_target_layer=1)),
}


def log(msg):
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def engine(args, env=None, timeout=300):
    """Run pretrain_gpt_nitp.py as a user would; return its JSONL records by iteration."""
    cmd = [sys.executable, os.path.join(REPO, "pretrain_gpt_nitp.py"), *map(str, args)]
    full_env = dict(os.environ, PYTHONPATH=REPO, PYTHONWARNINGS="ignore", **(env or {}))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return proc.stdout


def read_losses(path):
    out = {}
    for line in open(path):
        r = json.loads(line)
        if r.get("split") != "valid":
            out[r["iteration"]] = (r["lm_loss"], r["nitp_loss"])
    return out


def prepare(ref):
    """On CPU: the iteration-2 checkpoint and the CPU continuation (iterations 3-4)."""
    os.makedirs(ref, exist_ok=True)
    ckpt = os.path.join(ref, "ckpt")
    cpu = {"CUDA_VISIBLE_DEVICES": ""}
    engine(TINY + ["--save", ckpt, "--exit-interval", "2"], env=cpu)
    engine(TINY + ["--load", ckpt, "--log-jsonl", os.path.join(ref, "cpu.jsonl")], env=cpu)
    log(f"CPU reference written to {ref}")


def max_rel(a, b):
    assert sorted(a) == sorted(b), (sorted(a), sorted(b))
    return max(abs(x - y) / abs(x) for it in a for x, y in zip(a[it], b[it]))


def continuation_checks(ref, work):
    """(a) and (b): the CPU-made checkpoint continued here (CUDA when present)."""
    cpu = read_losses(os.path.join(ref, "cpu.jsonl"))
    logs = {}
    # (a) resumes exactly; (b) starts both precisions from the same weights with fresh
    # optimizers (--finetune: an fp32 optimizer state has no bf16 main-weight copies to load).
    for name, extra in (("fp32", []), ("fp32_finetune", ["--finetune"]),
                        ("bf16_finetune", ["--finetune", "--bf16"])):
        path = os.path.join(work, f"{name}.jsonl")
        engine(TINY + extra + ["--load", os.path.join(ref, "ckpt"), "--log-jsonl", path])
        logs[name] = read_losses(path)
    return dict(cuda_vs_cpu_max_rel=max_rel(cpu, logs["fp32"]),
                bf16_vs_fp32_max_rel=max_rel(logs["fp32_finetune"], logs["bf16_finetune"]),
                cpu=cpu, continued=logs)


def shape_record(shape, rec, peak_flops):
    """The issue's per-shape keys from an overhead.py record."""
    tokens = rec["seq_length"] * rec["micro_batch_size"] * rec["num_microbatches"]
    f = rec["flops"]
    out = dict(shape=shape, step_time_ratio=rec["paired_step_time_ratio"],
               flops_ratio=rec["flops_ratio"], memory_ratio=rec["memory_ratio"])
    for name, flops_per_token in (("ntp", f["baseline_flops_per_token"]),
                                  ("nitp", f["baseline_flops_per_token"]
                                   + f["nitp_flops_per_token"])):
        tps = tokens / rec[name]["step_time_median_s"]
        out[f"tokens_per_sec_{name}"] = tps
        out[f"mfu_{name}"] = flops_per_token * tps / peak_flops if peak_flops else None
        out[f"peak_gib_{name}"] = rec[name]["peak_bytes"] / 2**30
    return out


def run(ref, out, dry_run, repeats, sequential):
    import tempfile

    import torch

    from harness.side_by_side import run_shape

    if not dry_run and not torch.cuda.is_available():
        raise SystemExit("error: no GPU here; use --dry-run for the CPU path")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (dry run)"
    peak = next((v for k, v in PEAK_FLOPS.items() if k in device), None)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as work:
        cont = continuation_checks(ref, work)
    log(f"(a) cuda vs cpu max rel {cont['cuda_vs_cpu_max_rel']:.2e}; (b) bf16 vs fp32 "
        f"{cont['bf16_vs_fp32_max_rel']:.2e} ({time.time() - t0:.0f}s)")

    from megatron_nitp.parallel.distributed import initialize_distributed
    from megatron_nitp.parallel.without_te import transformer_engine_available

    initialize_distributed(seed=1234)
    opts = argparse.Namespace(device="cuda" if torch.cuda.is_available() else "cpu",
                              variants=["ntp", "nitp"], num_microbatches=1, seed=1234,
                              repeats=repeats, warmup=2, sequential=sequential, profile=False)
    shapes, raw = [], {}
    for shape, (config_file, full) in DRY_SHAPES.items():
        overrides = full if dry_run else {}  # the full paper shape on the GPU
        if not transformer_engine_available():  # grouped GEMM needs TE (or grouped_gemm)
            overrides = dict(overrides, moe_grouped_gemm=False)
        log(f"({'c' if shape.startswith('dense') else 'd'}) {shape}: NTP vs NITP")
        raw[shape] = run_shape(shape, config_file, overrides, opts)
        shapes.append(shape_record(shape, raw[shape], peak))
        log(f"  {json.dumps(shapes[-1])} ({time.time() - t0:.0f}s)")
    result = dict(device_name=device, cuda_vs_cpu_max_rel=cont["cuda_vs_cpu_max_rel"],
                  shapes=shapes)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    details = os.path.splitext(out)[0] + "_details.json"
    with open(details, "w") as f:
        json.dump(dict(continuation=cont, overhead=raw, seconds=time.time() - t0), f, indent=1)
    for s in shapes:
        ok_t = s["step_time_ratio"] <= s["flops_ratio"] + 0.005
        ok_m = s["memory_ratio"] <= 1.03
        log(f"{s['shape']}: step-time ratio {s['step_time_ratio']:.3f} (target <= "
            f"{s['flops_ratio'] + 0.005:.3f}: {'met' if ok_t else 'MISSED'}), memory ratio "
            f"{s['memory_ratio']:.3f} (<= 1.03: {'met' if ok_m else 'MISSED'})")
    log(f"wrote {out} and {details} in {time.time() - t0:.0f}s")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="CPU: the checkpoint and CPU continuation for (a)")
    pr.add_argument("--ref", default=os.path.join(REPO, "benchmarks", "gpu_check_ref"))
    r = sub.add_parser("run", help="the check (GPU; --dry-run: tiny shapes on CPU)")
    r.add_argument("--ref", default=os.path.join(REPO, "benchmarks", "gpu_check_ref"))
    r.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                 "gpu_check.json"))
    r.add_argument("--dry-run", action="store_true")
    r.add_argument("--repeats", type=int, default=7, help="Timed steps per variant and shape.")
    r.add_argument("--sequential", action="store_true",
                   help="One model at a time (if NTP and NITP together do not fit the GPU).")
    a = p.parse_args(argv)
    if a.cmd == "prepare":
        return prepare(a.ref)
    return run(a.ref, a.out, a.dry_run, a.repeats, a.sequential)


if __name__ == "__main__":
    main()
