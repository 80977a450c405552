"""Probe a trained model's frozen last-layer representations (paper App. D and E).

    python tools/eval_representations.py --load runs/compare/nitp/ckpt --out nitp_repr.json
    python tools/eval_representations.py --hf EXPORT --no-probe --mteb --mteb-tasks paper \
        --out nitp_mteb.json

Reports, as JSON:
- `geometry` (--load only): effective rank and pair cosine of the final hidden states on a fixed
  set of held-out micro-batches (the run's own validation split, same seed: two models trained
  on the same data are measured on the same tokens);
- `probe`: the offline App. E probe on the demo corpus (topic classification, half-document
  retrieval) with mean-pooled, L2-normalised last-layer states;
- `mteb` (--mteb, `pip install -e ".[mteb]"`): App. E's MTEB probe: each task's main score,
  Table 6's groups, the settings (megatron_nitp/evaluation/mteb_eval.py). Offline, mteb reads
  the tasks' data sets from the Hugging Face datasets cache, or runs local copies defined in
  --mteb-task-module.
Logic: megatron_nitp/evaluation/.
"""

import argparse
import json
import os
import sys
import time

from megatron_nitp.evaluation.runs import run_and_exit, write_json_atomic


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--load", help="megatron-nitp checkpoint directory (--save of a run)")
    src.add_argument("--hf", help="Hugging Face model directory")
    p.add_argument("--iteration", type=int, default=None, help="checkpoint iteration (latest)")
    p.add_argument("--geometry-batches", type=int, default=8,
                   help="held-out micro-batches for effective rank / pair cosine (0: skip)")
    p.add_argument("--micro-batch-size", type=int, default=8, help="sequences per batch")
    p.add_argument("--no-probe", action="store_true", help="skip the offline probe")
    p.add_argument("--per-topic", type=int, default=30, help="probe documents per topic")
    p.add_argument("--corpus", default=None,
                   help="demo corpus JSONL for the probe (default: the cached demo corpus)")
    p.add_argument("--mteb", action="store_true", help="also run MTEB tasks (needs `mteb`)")
    p.add_argument("--mteb-tasks", default=None,
                   help="comma-separated MTEB task names, or `paper`: App. E's 25 tasks, "
                        "reported with Table 6's groups (default: the --mteb-task-module's "
                        "tasks, else `paper`)")
    p.add_argument("--mteb-task-module", default=None,
                   help="Python file defining mteb tasks (mteb's custom-task API, e.g. local "
                        "copies read from local files); a task named like an installed one "
                        "replaces it")
    p.add_argument("--mteb-batch-size", type=int, default=16, help="texts per forward pass")
    p.add_argument("--out", default=None, help="JSON file to write (default: stdout only)")
    return p.parse_args(argv)


def evaluate(args) -> dict:
    from megatron_nitp.evaluation import probe
    from megatron_nitp.evaluation.representations import (HFEncoder, MegatronEncoder,
                                                          representation_geometry,
                                                          validation_batches)

    start = time.time()
    mteb_tasks = None
    if args.mteb:  # resolved before the model is loaded: a bad name fails before any work
        from megatron_nitp.evaluation import mteb_eval

        mteb_tasks = mteb_eval.resolve_tasks(args.mteb_tasks, args.mteb_task_module)
    elif args.mteb_tasks or args.mteb_task_module:
        raise ValueError("--mteb-tasks / --mteb-task-module: give --mteb too")
    if args.load:
        encoder = MegatronEncoder(args.load, args.iteration)
        report = {"model": args.load, "iteration": encoder.args.iteration,
                  "nitp": bool(encoder.args.run_config.get("nitp", {}).get("enabled"))}
    else:
        encoder = HFEncoder(args.hf)
        report = {"model": args.hf}
    if args.geometry_batches and args.load:
        batches = validation_batches(encoder.args, args.geometry_batches, args.micro_batch_size,
                                     tokenizer=encoder.tokenizer)
        report["geometry"] = representation_geometry(encoder, batches)
    if not args.no_probe:
        report["probe"] = probe.offline_probe(encoder, args.corpus, args.per_topic)
    if mteb_tasks is not None:
        out = mteb_eval.run(encoder, mteb_tasks, args.mteb_batch_size)
        report["mteb"], report["mteb_groups"] = out["scores"], out["groups"]
        report["mteb_types"], report["mteb_settings"] = out["types"], out["settings"]
    report["seconds"] = round(time.time() - start, 1)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    from megatron_nitp.training.checkpoint_io import CheckpointError

    try:
        report = evaluate(args)
    except (CheckpointError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"eval_representations.py: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        write_json_atomic(args.out, report)
    print(text)
    return 0


if __name__ == "__main__":
    run_and_exit(main)
