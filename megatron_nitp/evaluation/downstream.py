"""Downstream evaluation as the paper reports it (Tables 1, 2, 3, 5, 7, 8; Figs. 1c/d and 4), on
EleutherAI's lm-evaluation-harness (`pip install -e ".[eval]"`: lm-eval[hf]).

A checkpoint is exported to Hugging Face format (convert/hf_export.py: the plain backbone, NITP
head dropped) and scored by lm-eval's `hf` model, offline (HF_DATASETS_OFFLINE=1, datasets from
the local copies `--include-path` / the datasets cache point at). Two settings lm-eval would
otherwise take from the model and that are wrong for a megatron-nitp export:

- prefix token: lm-eval scores an empty context (perplexity-style tasks) after the tokenizer's
  BOS; pretraining data has no BOS (documents are separated by EOD only), so the prefix is the
  EOD id the model was trained with (the export's `eos_token_id`).
- max_length: lm-eval reads `max_position_embeddings` (the training sequence length) as its
  window; it is passed explicitly (default: that same length, printed) so it is a choice.

Suites, in the paper's column order. The paper states no shot counts; ours (each says why):
the benchmark's own standard protocol where it has one, lm-eval's task default otherwise.
Tasks lm-eval 0.4.13 does not ship (Xiezhi, Balanced COPA, C3, OpenCompass LCBench) have no
default; give a task you defined with `--task-map NAME=lm_eval_task[:shots[:metric]]`
(+ `--include-path`); until then their cells are "—" and the average says how many tasks it has.
"""

import functools
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

# -- the paper's tasks ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PaperTask:
    name: str                 # the paper's column name
    lm_eval_task: Optional[str]
    num_fewshot: int
    metric: str               # lm-eval's "metric,filter" key
    why: str


TASKS = {t.name: t for t in [
    PaperTask("MMLU", "mmlu", 5, "acc,none", "MMLU's own 5-shot protocol"),
    PaperTask("MMLU-Pro", "mmlu_pro", 5, "exact_match,custom-extract",
              "MMLU-Pro's own 5-shot chain-of-thought protocol (lm-eval's task)"),
    PaperTask("C-Eval", "ceval-valid", 5, "acc,none", "C-Eval's own 5-shot protocol (val split)"),
    PaperTask("Xiezhi", None, 0, "acc,none", "not in lm-eval 0.4.13"),
    PaperTask("LAMBADA", "lambada_openai", 0, "acc,none", "a zero-shot cloze by design"),
    PaperTask("BBH", "bbh_fewshot", 3, "exact_match,none", "BBH's own 3-shot prompts"),
    PaperTask("ARC-C", "arc_challenge", 25, "acc_norm,none", "the Open LLM Leaderboard's 25-shot"),
    PaperTask("CSQA", "commonsense_qa", 0, "acc,none", "lm-eval's default (no standard pool)"),
    PaperTask("COPA", None, 0, "acc,none", "Balanced COPA is not in lm-eval 0.4.13 "
              "(its `copa` is SuperGLUE's, a different set)"),
    PaperTask("C3", None, 0, "acc,none", "not in lm-eval 0.4.13"),
    PaperTask("AGIEval", "agieval", 0, "acc,none", "AGIEval's zero-shot setting (lm-eval's)"),
    PaperTask("GSM8k", "gsm8k", 5, "exact_match,strict-match", "lm-eval's default 5-shot"),
    PaperTask("LCBench", None, 0, "pass@1", "OpenCompass code-execution benchmark, not in lm-eval"),
]}

SUITES = {
    # Tables 1 and 5; Fig. 4's average (its NTP line 31.37 is Table 1's 3B MoE average).
    "moe": ["MMLU", "MMLU-Pro", "C-Eval", "Xiezhi", "LAMBADA", "BBH", "ARC-C", "CSQA", "COPA",
            "C3", "AGIEval", "GSM8k", "LCBench"],
    "dense": ["MMLU", "C-Eval", "BBH", "ARC-C", "C3", "AGIEval", "LCBench"],          # Table 2
    "ablation": ["MMLU", "MMLU-Pro", "CSQA", "BBH", "LCBench"],                         # Tables 3, 7, 8
    "fig1": ["MMLU", "C3", "C-Eval", "ARC-C"],                                          # App. B, Fig. 1c/d
}

# The paper's numbers to compare with: {table: {model: {method: {column: score}}}}.
PAPER = {
    "table1": {
        "1.9bA0.3b": {"NTP": [31.05, 7.14, 32.31, 32.13, 50.36, 17.70, 24.74, 25.38, 61.20, 32.21, 24.57, 6.06, 1.56, 26.65],
                      "NITP": [31.68, 7.47, 33.16, 31.22, 50.52, 19.11, 29.20, 26.61, 62.90, 29.69, 26.69, 6.44, 2.26, 27.46]},
        "3bA0.5b": {"NTP": [34.60, 11.00, 33.53, 36.53, 55.45, 21.92, 32.65, 34.15, 65.60, 39.06, 26.67, 12.81, 3.82, 31.37],
                    "NITP": [37.37, 12.29, 33.12, 39.61, 55.45, 26.14, 37.11, 37.92, 65.60, 44.38, 27.76, 14.40, 4.17, 33.49]},
        "9bA1b": {"NTP": [43.71, 15.29, 38.97, 45.59, 62.32, 28.07, 51.20, 45.70, 68.10, 56.65, 30.91, 30.09, 6.95, 40.27],
                  "NITP": [46.14, 21.00, 40.72, 49.10, 64.49, 28.67, 53.95, 49.96, 70.70, 63.01, 29.97, 32.52, 8.00, 42.94]},
    },
    "table5": {"45B MoE": {"NTP": [55.09, 31.71, 47.67, 57.65, 69.03, 42.89, 67.70, 59.46, 75.20, 75.51, 35.08, 50.27, 13.39, 52.36],
                           "NITP": [55.51, 32.29, 50.87, 59.97, 69.38, 43.48, 70.10, 59.95, 75.20, 78.36, 38.69, 52.62, 15.83, 54.02]}},
    "table2": {
        "0.5B": {"NTP": [30.59, 33.72, 18.96, 31.95, 28.21, 27.01, 0.52, 24.42],
                 "NITP": [31.01, 32.78, 19.92, 34.71, 32.10, 26.15, 1.39, 25.44]},
        "2B": {"NTP": [37.96, 35.67, 26.59, 39.52, 49.26, 30.51, 3.83, 31.91],
               "NITP": [40.14, 37.81, 27.33, 41.92, 53.42, 31.66, 3.65, 33.70]},
        "3B": {"NTP": [43.54, 39.17, 31.25, 51.20, 59.01, 31.77, 4.35, 37.18],
               "NITP": [44.95, 40.14, 29.40, 51.55, 63.67, 35.11, 4.87, 38.53]},
    },
}
PAPER_SUITE = {"table1": "moe", "table5": "moe", "table2": "dense"}


def suite_tasks(suite: str, task_map: Optional[Dict[str, PaperTask]] = None) -> List[PaperTask]:
    """The suite's tasks (or a comma list of paper names), with --task-map overrides applied."""
    names = SUITES[suite] if suite in SUITES else [n.strip() for n in suite.split(",") if n.strip()]
    table = dict(TASKS, **(task_map or {}))
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"--suite {suite}: unknown task(s) {unknown}; suites: {sorted(SUITES)}, "
                         f"tasks: {sorted(table)} (add one with --task-map NAME=lm_eval_task)")
    return [table[n] for n in names]


def parse_task_map(items: Sequence[str]) -> Dict[str, PaperTask]:
    """NAME=lm_eval_task[:shots[:metric,filter]] -> {NAME: PaperTask}."""
    out = {}
    for item in items:
        m = re.fullmatch(r"([^=]+)=([^:]+)(?::(\d+))?(?::(.+))?", item)
        if not m:
            raise ValueError(f"--task-map {item!r}: expected NAME=lm_eval_task[:shots[:metric]]")
        name, task, shots, metric = m.groups()
        base = TASKS.get(name)
        out[name] = PaperTask(name, task, int(shots) if shots else (base.num_fewshot if base else 0),
                              metric or (base.metric if base else "acc,none"), "--task-map")
    return out


# -- one exported model --------------------------------------------------------------------------


def eod_id_of_export(hf_dir: str) -> int:
    """The EOD id the model was trained with: the exporter writes it as `eos_token_id`."""
    with open(os.path.join(hf_dir, "config.json")) as fh:
        eos = json.load(fh).get("eos_token_id")
    if isinstance(eos, list):
        eos = eos[0]
    if eos is None:
        raise ValueError(f"{hf_dir}/config.json: no eos_token_id (the EOD id); pass --prefix-token-id")
    return int(eos)


def evaluate_hf(hf_dir: str, tasks: Sequence[PaperTask], max_length: int, prefix_token_id: int,
                batch_size: int = 8, device: str = "cpu", include_path: Optional[str] = None,
                limit: Optional[float] = None, log_samples: bool = False) -> dict:
    """lm-eval's `hf` model on one export: {"scores": {paper name: score in %}, "lm_eval": raw}."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    runnable = [t for t in tasks if t.lm_eval_task]
    scores = {t.name: None for t in tasks}
    if not runnable:
        return {"scores": scores, "lm_eval": None}
    model = HFLM(pretrained=hf_dir, tokenizer=hf_dir, device=device, batch_size=batch_size,
                 dtype="float32" if device == "cpu" else "bfloat16", max_length=max_length,
                 prefix_token_id=prefix_token_id, add_bos_token=False, trust_remote_code=False)
    manager = _task_manager(include_path)
    raw = {}
    # One call per shot count (lm-eval's num_fewshot is global to a call).
    for shots in sorted({t.num_fewshot for t in runnable}):
        group = [t for t in runnable if t.num_fewshot == shots]
        out = lm_eval.simple_evaluate(model=model, tasks=[t.lm_eval_task for t in group],
                                      num_fewshot=shots, task_manager=manager, limit=limit,
                                      log_samples=log_samples, bootstrap_iters=0)
        for t in group:
            result = out["results"][t.lm_eval_task]
            if t.metric not in result:
                raise KeyError(f"{t.lm_eval_task}: no metric {t.metric!r} in {sorted(result)}")
            value = result[t.metric]
            scores[t.name] = 100.0 * value if t.metric.split(",")[0] in PERCENT_METRICS else value
        raw[str(shots)] = {"results": out["results"], "configs": _jsonable(out.get("configs")),
                           "samples": _jsonable(out.get("samples")) if log_samples else None}
    return {"scores": scores, "lm_eval": raw}


@functools.lru_cache(maxsize=None)
def _task_manager(include_path: Optional[str]):
    """One TaskManager per task directory: building one indexes every task lm-eval ships (seconds),
    and a directory of checkpoints is scored one iteration after the other in this process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path) if include_path else TaskManager()


PERCENT_METRICS = {"acc", "acc_norm", "exact_match", "pass@1", "mc1", "mc2", "f1", "em"}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str)) if obj is not None else None


def average(scores: Dict[str, Optional[float]]) -> Optional[float]:
    vals = [v for v in scores.values() if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


# -- tables and figures --------------------------------------------------------------------------


def read_results(work_dir: str) -> Dict[int, dict]:
    """{iteration: result record} of a work directory written by `tools/eval_downstream.py`."""
    out = {}
    rdir = os.path.join(work_dir, "results")
    for name in sorted(os.listdir(rdir)) if os.path.isdir(rdir) else []:
        m = re.fullmatch(r"iter_(\d+)\.json", name)
        if m:
            with open(os.path.join(rdir, name)) as fh:
                out[int(m.group(1))] = json.load(fh)
    return out


def paper_table(runs: Dict[str, Dict[str, Optional[float]]], columns: Sequence[str],
                title: str = "") -> str:
    """Markdown in the paper's layout: one row per method (NTP, NITP, ...), task columns, Avg."""
    fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
    lines = ([f"**{title}**", ""] if title else []) + [
        "| Method | " + " | ".join(columns) + " | Avg. |",
        "| --- | " + " | ".join("---:" for _ in columns) + " | ---: |"]
    for method, scores in runs.items():
        avail = {c: scores.get(c) for c in columns}
        n = sum(v is not None for v in avail.values())
        avg = average(avail)
        note = "" if n == len(columns) else f" ({n}/{len(columns)} tasks)"
        lines.append(f"| {method} | " + " | ".join(fmt(avail[c]) for c in columns)
                     + f" | {fmt(avg)}{note} |")
    return "\n".join(lines) + "\n"


def plot_scores(series: Dict[str, Dict[int, float]], out_png: str, ylabel: str) -> None:
    """Score vs training step, one line per run (Fig. 1c/d)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, points in series.items():
        xs = sorted(k for k, v in points.items() if v is not None)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=label)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = out_png + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, out_png)
