"""tools/eval_downstream.py end to end on CPU: tiny dense and MoE models trained by the engine
(SentencePiece tokenizer, mock data, checkpoints at iterations 1 and 2) are exported and scored
by lm-eval's `hf` model on two tiny local tasks (a multiple-choice task and a perplexity-style
rolling log-likelihood task whose documents start from the prefix token), offline. lm-eval's
per-sample log-likelihoods must equal the project's own megatron model's on the same tokens
(workers/own_loglikelihoods.py); the prefix must be the EOD id. Then the resume, the table in the
paper's layout and the score-vs-step PNG.

The lm-eval parts need `pip install -e ".[eval]"` (lm-eval[hf], ~1.7 min and ~400 MB more than
`.[test]`); without it they are skipped, saying so.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.e2e.engine_runner import REPO_ROOT, run_engine

TOOL = str(REPO_ROOT / "tools" / "eval_downstream.py")
OWN = str(REPO_ROOT / "tests" / "e2e" / "workers" / "own_loglikelihoods.py")
MODEL = ["--seq-length", "64", "--micro-batch-size", "2", "--mock-data", "--lr", "1e-3",
         "--lr-warmup-iters", "1", "--train-iters", "2", "--save-interval", "1",
         "--hidden-size", "32", "--num-attention-heads", "2", "--nitp", "--nitp-target-layer", "1",
         "--make-vocab-size-divisible-by", "16"]
FAMILIES = {
    "dense": ("gpt", ["--num-layers", "2"]),
    "moe": ("moe", ["--num-layers", "3", "--num-experts", "4", "--moe-router-topk", "2",
                    "--moe-ffn-hidden-size", "16", "--moe-shared-expert-intermediate-size", "16",
                    "--moe-layer-freq", "[0,1,1]"]),
}
MC = [{"question": f"Question {i}: the quick brown fox", "choices": [" jumps", " sleeps", " 42"],
       "answer": i % 3} for i in range(4)]
PPL = [{"text": "Hello world, hello megatron."}, {"text": "The lazy dog 12 and words."}]
TASK_YAMLS = {
    "tiny_mc.yaml": """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/tiny_mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
""",
    "tiny_ppl.yaml": """task: tiny_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {dir}/tiny_ppl.jsonl
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
""",
}
TASK_FLAGS = ["--suite", "TinyMC,TinyPPL", "--task-map", "TinyMC=tiny_mc:0:acc,none",
              "--task-map", "TinyPPL=tiny_ppl:0:word_perplexity,none"]


def _run(cmd, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=str(REPO_ROOT), TRANSFORMERS_VERBOSITY="error",
               HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(REPO_ROOT))
    assert proc.returncode == 0, (" ".join(map(str, cmd)) + "\n" + proc.stdout[-3000:]
                                  + proc.stderr[-3000:])
    return proc


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from megatron_nitp.data.tokenizer_training import train_sentencepiece

    root = tmp_path_factory.mktemp("evaldown")
    sp = train_sentencepiece(
        [f"The quick brown fox {i} jumps over the lazy dog; numbers 123{i} and words."
         for i in range(300)] + ["Hello world, hello megatron. Question answer sleeps."] * 20,
        320, str(root / "sp.model"))
    for name, (family, flags) in FAMILIES.items():
        run_engine(MODEL + flags + ["--tokenizer-type", "SentencePieceTokenizer",
                                    "--tokenizer-model", sp, "--save", root / "ckpt" / name],
                   family=family)
    inc = root / "tasks"
    inc.mkdir()
    (inc / "tiny_mc.jsonl").write_text("".join(json.dumps(d) + "\n" for d in MC))
    (inc / "tiny_ppl.jsonl").write_text("".join(json.dumps(d) + "\n" for d in PPL))
    for fname, text in TASK_YAMLS.items():
        (inc / fname).write_text(text.format(dir=inc))
    return root


def test_scores_every_checkpoint_and_lm_eval_equals_the_megatron_model(ws):
    pytest.importorskip("lm_eval", reason='lm-eval not installed: pip install -e ".[eval]"')
    jobs, theirs = [], {}
    for name in FAMILIES:
        work = ws / "evals" / name
        out = _run([sys.executable, TOOL, "run", "--load", ws / "ckpt" / name, "--iterations",
                    "all", "--work-dir", work, *TASK_FLAGS, "--include-path", ws / "tasks",
                    "--batch-size", "2", "--log-samples", "--keep-exports"]).stdout
        assert "max_length 64 (the training sequence length)" in out, out
        for it in (1, 2):
            rec = json.loads((work / "results" / f"iter_{it:07d}.json").read_text())
            hf = work / "hf" / f"iter_{it:07d}"
            eod = json.loads((hf / "config.json").read_text())["eos_token_id"]
            assert rec["prefix_token_id"] == eod and f"prefix token {eod} (EOD)" in out
            assert 0 <= rec["scores"]["TinyMC"] <= 100 and rec["scores"]["TinyPPL"] > 1
            samples = {t: s for shots in rec["lm_eval"].values() for t, s in shots["samples"].items()}
            # Every request fits the window (lm-eval cuts longer ones on the left); ASCII text
            # has at most one token per character.
            assert max(len(c) + len(x) for s in samples["tiny_mc"] for c, x in s["arguments"]) < 64
            (work / f"samples_{it}.json").write_text(json.dumps(samples))
            job = {"load": str(ws / "ckpt" / name), "iteration": it, "tokenizer": str(hf),
                   "samples": str(work / f"samples_{it}.json"), "prefix_token_id": eod,
                   "out": str(work / f"own_{it}.json")}
            (work / f"job_{it}.json").write_text(json.dumps(job))
            jobs += ["--job", work / f"job_{it}.json"]
            theirs[(name, it)] = ([[r[0][0] for r in s["resps"]] for s in samples["tiny_mc"]],
                                  [s["resps"][0][0] for s in samples["tiny_ppl"]], job["out"])
    _run([sys.executable, OWN, *jobs])
    for (name, it), (mc, ppl, own_path) in theirs.items():
        own = json.loads(open(own_path).read())
        assert len(mc) == len(MC) and len(ppl) == len(PPL)
        for a, b in zip(mc, own["mc"]):
            assert a == pytest.approx(b, abs=1e-4), (name, it, mc, own["mc"])
        assert ppl == pytest.approx(own["rolling"], abs=1e-4), (name, it, ppl, own["rolling"])
    # Resumable: a second run scores nothing again.
    again = _run([sys.executable, TOOL, "run", "--load", ws / "ckpt" / "dense", "--iterations",
                  "all", "--work-dir", ws / "evals" / "dense", *TASK_FLAGS,
                  "--include-path", ws / "tasks"])
    assert again.stdout.count("scored earlier, skipped") == 2, again.stdout
    # A result made with other settings (here a --limit smoke run) is never reused.
    smoke = _run([sys.executable, TOOL, "run", "--load", ws / "ckpt" / "dense", "--iterations",
                  "2", "--work-dir", ws / "evals" / "dense", *TASK_FLAGS,
                  "--include-path", ws / "tasks", "--limit", "1"])
    assert "iteration 2: scored earlier with other settings (limit): scoring again" in smoke.stdout
    rec = json.loads((ws / "evals" / "dense" / "results" / "iter_0000002.json").read_text())
    assert rec["settings"]["limit"] == 1


def test_report_writes_the_papers_layout_and_a_score_vs_step_png(ws):
    pytest.importorskip("lm_eval", reason='lm-eval not installed: pip install -e ".[eval]"')
    out = ws / "report"
    proc = _run([sys.executable, TOOL, "report", "--run", f"NTP={ws / 'evals' / 'dense'}",
                 "--run", f"NITP={ws / 'evals' / 'moe'}", *TASK_FLAGS, "--out", out / "t.md",
                 "--plot", out / "fig.png", "--paper", "table2:2B"])
    md = (out / "t.md").read_text()
    assert "| Method | TinyMC | TinyPPL | Avg. |" in md and "| NTP |" in md and "| NITP |" in md
    assert "| paper NTP | 37.96 | 35.67 | 26.59 | 39.52 | 49.26 | 30.51 | 3.83 | 31.91 |" in md, md
    assert (out / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", proc.stdout


def test_bad_inputs_give_one_error_line(tmp_path):
    for argv, message in [
        (["run", "--load", str(tmp_path / "none"), "--work-dir", str(tmp_path)], "no such directory"),
        (["run", "--hf", str(tmp_path), "--work-dir", str(tmp_path), "--suite", "Nope"],
         "unknown task(s) ['Nope']"),
        (["report", "--run", f"X={tmp_path}", "--out", str(tmp_path / "t.md")], "no results in"),
    ]:
        proc = subprocess.run([sys.executable, TOOL, *argv], capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), timeout=120)
        assert proc.returncode == 2 and message in proc.stderr, (argv, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
