"""Plot training runs from their JSONL logs: LM loss, NITP loss, effective rank, pair cosine.

Library part of tools/plot_run.py, also called by the engine at the end of a run (`--plot`).
Uses matplotlib's Agg canvas directly (no pyplot): no display, no global figure state, safe to
call inside a training process.
"""

import json
import os
from typing import Dict, List, Optional, Sequence

# (record key, panel title); the loss panels also show eval records ("split": "valid") as markers.
PANELS = (("lm_loss", "LM loss"), ("nitp_loss", "NITP loss"),
          ("effective_rank", "effective rank"), ("pair_cosine", "pair cosine"))
LOSSES = ("lm_loss", "nitp_loss")


def read_run(path: str) -> Dict[str, Dict[int, dict]]:
    """{"train": {iteration: record}, "valid": {...}} from a JSONL log.

    A resumed run appends to the same file, so an iteration can appear twice (logged before a
    crash, then again after the resume): the later record wins. Unparseable lines (a write cut
    short by a kill) are skipped.
    """
    runs: Dict[str, Dict[int, dict]] = {"train": {}, "valid": {}}
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("iteration"), int):
                continue
            runs["valid" if rec.get("split") == "valid" else "train"][rec["iteration"]] = rec
    return runs


def _series(records: Dict[int, dict], key: str):
    points = [(it, rec[key]) for it, rec in sorted(records.items())
              if isinstance(rec.get(key), (int, float))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_runs(paths: Sequence[str], out: str, labels: Optional[Sequence[str]] = None,
              title: Optional[str] = None) -> str:
    """Draw the 2x2 panels for one or more runs (overlaid) into `out` (PNG); returns `out`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if labels is None:
        labels = [_default_label(p) for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} runs")
    runs = [read_run(p) for p in paths]
    fig = Figure(figsize=(11, 8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()
    for ax, (key, name) in zip(axes, PANELS):
        drawn = False
        for i, (run, label) in enumerate(zip(runs, labels)):
            color = f"C{i}"
            x, y = _series(run["train"], key)
            if x:
                ax.plot(x, y, color=color, lw=1.2,
                        label=f"{label} (train)" if key in LOSSES else label)
                drawn = True
            if key in LOSSES:
                x, y = _series(run["valid"], key)
                if x:
                    ax.plot(x, y, "o", color=color, ms=5, mec="black", mew=0.5,
                            label=f"{label} (valid)")
                    drawn = True
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:  # e.g. an NTP run (nitp_loss null) or metrics never measured
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
                    color="gray")
    if title:
        fig.suptitle(title)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    return out


def _default_label(path: str) -> str:
    """`runs/demo/log.jsonl` -> `demo`; `runs/ntp.jsonl` -> `ntp`."""
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in ("log", "train", "run") and os.path.dirname(os.path.abspath(path)):
        return os.path.basename(os.path.dirname(os.path.abspath(path)))
    return stem


def summary(paths: Sequence[str]) -> List[str]:
    """One line per run: last train iteration and losses, for the tool's console output."""
    lines = []
    for p in paths:
        train = read_run(p)["train"]
        if not train:
            lines.append(f"{p}: no training records")
            continue
        last = train[max(train)]
        nitp = last.get("nitp_loss")
        lines.append(f"{p}: {len(train)} iterations logged, last {max(train)}: lm loss "
                     f"{last.get('lm_loss'):.4f}" + (f", nitp loss {nitp:.4f}" if nitp is not None
                                                    else ""))
    return lines
