"""Downstream evaluation with lm-evaluation-harness, as the paper reports it (Tables 1, 2, 3, 5, 7,
8; Figs. 1c/d, 4). Needs `pip install -e ".[eval]"` (lm-eval[hf]).

  # score checkpoints (one, or every iteration of a checkpoint directory): export + evaluate each
  python tools/eval_downstream.py run --load CKPT_DIR --work-dir evals/nitp --suite moe \
      [--iterations latest|all|1000,2000] [--include-path MY_TASKS] [--task-map C3=my_c3] \
      [--max-length 8192] [--device cuda] [--batch-size 16] [--limit N]
  python tools/eval_downstream.py run --hf HF_DIR --work-dir evals/x --suite dense
  # the paper's layout: NTP vs NITP rows, task columns, average; and score vs training step
  python tools/eval_downstream.py report --run NTP=evals/ntp --run NITP=evals/nitp --suite moe \
      --out evals/table.md --plot evals/fig1.png [--plot-suite fig1] [--paper table1:3bA0.5b]

`run` is resumable: WORK_DIR/results/iter_N.json is written atomically when an iteration is
scored and a finished iteration is skipped; exports go to WORK_DIR/hf/iter_N (renamed into place
when complete; removed after scoring unless --keep-exports). Offline: HF_DATASETS_OFFLINE=1 and
HF_HUB_OFFLINE=1 are set unless already set; lm-eval reads the datasets from the local datasets
cache (HF_DATASETS_CACHE) or from task YAMLs in --include-path that point at local files.
The prefix token (empty contexts) is the EOD id the model was trained with, max_length is the
training sequence length unless --max-length says otherwise; both are printed. See
megatron_nitp/evaluation/downstream.py for the suites and the shot counts chosen.
"""

import argparse
import json
import os
import shutil
import sys


PROG = "eval_downstream.py"


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


def build_parser():
    from megatron_nitp.evaluation.downstream import SUITES

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="export + evaluate checkpoints")
    src = r.add_mutually_exclusive_group(required=True)
    src.add_argument("--load", help="megatron-nitp checkpoint directory")
    src.add_argument("--hf", help="an exported Hugging Face directory (one model)")
    r.add_argument("--work-dir", required=True)
    r.add_argument("--iterations", default="latest", help="latest | all | comma list")
    r.add_argument("--suite", default="moe",
                   help=f"{', '.join(SUITES)}, or a comma list of paper task names")
    r.add_argument("--task-map", action="append", default=[],
                   help="NAME=lm_eval_task[:shots[:metric,filter]] (repeatable)")
    r.add_argument("--include-path", default=None, help="directory of extra lm-eval task YAMLs")
    r.add_argument("--max-length", type=int, default=None,
                   help="lm-eval's window (default: the model's training sequence length)")
    r.add_argument("--prefix-token-id", type=int, default=None,
                   help="prefix of empty contexts (default: the EOD id the model trained with)")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--device", default="cpu")
    r.add_argument("--limit", type=float, default=None, help="lm-eval --limit (smoke runs)")
    r.add_argument("--log-samples", action="store_true", help="keep lm-eval's per-sample logs")
    r.add_argument("--keep-exports", action="store_true")
    t = sub.add_parser("report", help="table in the paper's layout + score-vs-step PNG")
    t.add_argument("--run", action="append", required=True, help="LABEL=WORK_DIR (repeatable)")
    t.add_argument("--suite", default="moe")
    t.add_argument("--task-map", action="append", default=[])
    t.add_argument("--out", required=True, help="Markdown table")
    t.add_argument("--plot", default=None, help="PNG: average score vs training step")
    t.add_argument("--plot-suite", default=None,
                   help="tasks averaged in the PNG (default: --suite; fig1 = App. B's four)")
    t.add_argument("--paper", default=None,
                   help="also print the paper's rows, e.g. table1:3bA0.5b, table2:2B, table5:45B MoE")
    return p


def _iterations(ckpt_dir, spec):
    from megatron_nitp.training.checkpoint_io import latest_iteration

    found = sorted(int(n[5:]) for n in os.listdir(ckpt_dir)
                   if n.startswith("iter_") and n[5:].isdigit())
    if spec == "latest":
        latest = latest_iteration(ckpt_dir)
        return [latest] if latest is not None else []
    if spec == "all":
        return found
    wanted = [int(x) for x in spec.split(",") if x.strip()]
    missing = [w for w in wanted if w not in found]
    if missing:
        raise ValueError(f"--iterations: no checkpoint for {missing} in {ckpt_dir} (has {found})")
    return wanted


def _write_json_atomic(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(tmp, path)


def _export(ckpt_dir, iteration, out_dir):
    from megatron_nitp.convert.hf_export import export_to_hf

    if os.path.isfile(os.path.join(out_dir, "config.json")):
        return out_dir
    tmp = out_dir + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    export_to_hf(ckpt_dir, tmp, iteration, progress_bar=False)
    os.replace(tmp, out_dir)
    return out_dir


def run(a) -> int:
    from megatron_nitp.evaluation.downstream import (average, eod_id_of_export, evaluate_hf,
                                                     parse_task_map, suite_tasks)

    try:
        tasks = suite_tasks(a.suite, parse_task_map(a.task_map))
    except ValueError as e:
        return _fail(str(e))
    if a.include_path and not os.path.isdir(a.include_path):
        return _fail(f"--include-path {a.include_path}: no such directory")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return _fail('lm-eval is not installed: pip install -e ".[eval]" (lm-eval[hf])')
    if a.load:
        if not os.path.isdir(a.load):
            return _fail(f"--load {a.load}: no such directory")
        try:
            its = _iterations(a.load, a.iterations)
        except ValueError as e:
            return _fail(str(e))
        if not its:
            return _fail(f"--load {a.load}: no checkpoint (no iter_* directory / tracker)")
        jobs = [(it, None) for it in its]
    else:
        if not os.path.isfile(os.path.join(a.hf, "config.json")):
            return _fail(f"--hf {a.hf}: not a Hugging Face model directory (no config.json)")
        jobs = [(0, a.hf)]
    skipped = [t.name for t in tasks if not t.lm_eval_task]
    if skipped:
        print(f"not scored (no lm-eval task; give one with --task-map): {', '.join(skipped)}")
    # What decides a score: a result made with other settings (a --limit smoke run, another
    # suite or window) is scored again, never reused.
    settings = {"source": os.path.abspath(a.load or a.hf), "suite": a.suite,
                "tasks": [[t.name, t.lm_eval_task, t.num_fewshot, t.metric] for t in tasks],
                "limit": a.limit, "max_length": a.max_length, "prefix_token_id": a.prefix_token_id,
                "include_path": a.include_path and os.path.abspath(a.include_path)}
    for iteration, hf_dir in jobs:
        result_path = os.path.join(a.work_dir, "results", f"iter_{iteration:07d}.json")
        if os.path.isfile(result_path):
            with open(result_path) as fh:
                earlier = json.load(fh).get("settings")
            if earlier == settings:
                print(f"iteration {iteration}: scored earlier, skipped")
                continue
            changed = sorted(k for k in settings if (earlier or {}).get(k) != settings[k])
            print(f"iteration {iteration}: scored earlier with other settings "
                  f"({', '.join(changed)}): scoring again")
        exported = hf_dir is None
        if exported:
            hf_dir = _export(a.load, iteration, os.path.join(a.work_dir, "hf", f"iter_{iteration:07d}"))
        with open(os.path.join(hf_dir, "config.json")) as fh:
            trained_length = json.load(fh).get("max_position_embeddings")
        max_length = a.max_length or trained_length
        prefix = a.prefix_token_id if a.prefix_token_id is not None else eod_id_of_export(hf_dir)
        print(f"iteration {iteration}: lm-eval on {hf_dir}: max_length {max_length} "
              f"({'--max-length' if a.max_length else 'the training sequence length'}), "
              f"prefix token {prefix} ({'--prefix-token-id' if a.prefix_token_id is not None else 'EOD'})",
              flush=True)
        out = evaluate_hf(hf_dir, tasks, max_length, prefix, a.batch_size, a.device,
                          a.include_path, a.limit, a.log_samples)
        record = {"iteration": iteration, "source": a.load or a.hf, "max_length": max_length,
                  "prefix_token_id": prefix, "suite": a.suite,
                  "tasks": {t.name: {"lm_eval_task": t.lm_eval_task, "num_fewshot": t.num_fewshot,
                                     "metric": t.metric} for t in tasks},
                  "scores": out["scores"], "average": average(out["scores"]),
                  "lm_eval": out["lm_eval"], "settings": settings}
        _write_json_atomic(result_path, record)
        shown = ", ".join(f"{k} {v:.2f}" for k, v in out["scores"].items() if v is not None)
        print(f"iteration {iteration}: {shown}")
        if exported and not a.keep_exports:
            shutil.rmtree(hf_dir, ignore_errors=True)
    return 0


def report(a) -> int:
    from megatron_nitp.evaluation.downstream import (PAPER, PAPER_SUITE, SUITES, average,
                                                     paper_table, parse_task_map, plot_scores,
                                                     read_results, suite_tasks)

    try:
        columns = [t.name for t in suite_tasks(a.suite, parse_task_map(a.task_map))]
        plot_columns = [t.name for t in suite_tasks(a.plot_suite or a.suite,
                                                    parse_task_map(a.task_map))]
    except ValueError as e:
        return _fail(str(e))
    runs, series = {}, {}
    for item in a.run:
        if "=" not in item:
            return _fail(f"--run {item!r}: expected LABEL=WORK_DIR")
        label, work = item.split("=", 1)
        results = read_results(work)
        if not results:
            return _fail(f"--run {item}: no results in {work}/results (run `{PROG} run` first)")
        runs[label] = results[max(results)]["scores"]
        series[label] = {it: average({c: r["scores"].get(c) for c in plot_columns})
                         for it, r in results.items()}
    md = paper_table(runs, columns, title=f"suite {a.suite}: latest scored iteration of each run")
    if a.paper:
        table, _, model = a.paper.partition(":")
        if table not in PAPER or model not in PAPER[table]:
            return _fail(f"--paper {a.paper}: known {[f'{t}:{m}' for t in PAPER for m in PAPER[t]]}")
        cols = SUITES[PAPER_SUITE[table]]
        paper_rows = {f"paper {m}": dict(zip(cols, v[:-1])) for m, v in PAPER[table][model].items()}
        md += "\n" + paper_table(paper_rows, cols, title=f"paper {table}, {model}")
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as fh:
        fh.write(md)
    print(md)
    if a.plot:
        plot_scores(series, a.plot, f"average of {', '.join(plot_columns)}")
        print(f"wrote {a.plot}")
    return 0


def main(argv=None) -> int:
    # Before anything imports transformers / huggingface_hub: they read these at import time.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    a = build_parser().parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return run(a) if a.command == "run" else report(a)


if __name__ == "__main__":
    sys.exit(main())
