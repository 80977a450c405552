"""docs/reproduce.md run end to end at tiny size: same commands and flags, a smaller model and data.

1. The `[submit]` blocks run in bash as written, with one change: the guide's `train RUN CONFIG
   NODES [OVERRIDES]` gets one more override, workers/guide_tiny_{moe,dense}.yaml (2 steps of 8
   micro-batches, 3 or 2 layers of width 32, mock data, the test's SentencePiece tokenizer).
   `sbatch` runs the SLURM script tools/launch_slurm.py wrote on this machine (one CPU rank:
   GPUS_PER_NODE=0, TASKS_PER_NODE=1, no container; srun/scontrol/squeue/scancel stubbed, and
   SAVE_INTERVAL=1 so Fig. 1c/d has two checkpoints) for the four runs below; the other runs'
   scripts are only written, and their checkpoint directories point at the trained run of the
   same kind (MoE or dense, NTP or NITP), so every evaluation command has a checkpoint to read.
2. Every command of the `[eval]` blocks is recorded in order (bash runs the blocks with `python`
   recording its arguments) and then run by workers/guide_runner.py with tiny stand-ins only:
   `--device cpu`, a tiny lm-eval task behind each paper task name (with the paper's shot count),
   local copies of the 25 MTEB tasks (workers/mteb_local_tasks.py), a tiny indexed dataset as
   $PILE.
3. What they wrote is checked: checkpoints and logs, the tables in the paper's layout with every
   cell scored, the PNGs, Table 6's groups (macro averages of the tasks' scores; one MTEB score
   recomputed independently from transformers' hidden states of an export), the validation
   cross-entropies.
"""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from tests.e2e.engine_runner import REPO_ROOT

GUIDE = REPO_ROOT / "docs" / "reproduce.md"
WORKERS = REPO_ROOT / "tests" / "e2e" / "workers"
TRAINED = {"moe_3b_a0.5b_ntp", "moe_3b_a0.5b_nitp", "dense_2b_ntp", "dense_2b_nitp"}
STUBS = {
    # One rank on this machine: srun's own options dropped, the task command run.
    "srun": 'while [ $# -gt 0 ] && [[ $1 == --* ]]; do shift; done\n'
            'SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1 exec "$@"\n',
    "scontrol": '[ "$1 $2" = "show hostnames" ] && echo localhost\nexit 0\n',
    "squeue": "exit 0\n",
    "scancel": "exit 0\n",
}
MC_TRAIN = [{"question": f"Example {i}: the quick brown fox", "choices": [" jumps", " sleeps"],
             "answer": i % 2} for i in range(26)]
# The same question twice, once right each way: zero-shot, whichever option a model prefers, it
# scores 50% (few-shot, the sampled examples differ between the two).
MC_TEST = [{"question": "Question: hello world", "choices": [" jumps", " sleeps"], "answer": i}
           for i in range(2)]
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    train: {dir}/tiny_mc_train.jsonl
    test: {dir}/tiny_mc_test.jsonl
test_split: test
fewshot_split: train
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""
WORDS = ["the quick brown fox", "jumps over the lazy dog", "hello world", "hello megatron",
         "numbers and words", "question answer sleeps"]


def _blocks(tag):
    text = GUIDE.read_text()
    return [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if b.startswith(f"# [{tag}]")]


def _env(root, **extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1",
               PYTHONPATH=str(REPO_ROOT), HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", CK=str(root / "ck"),
               PATH=f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(extra)
    return env


def _bash(script, env, timeout):
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=str(REPO_ROOT), env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _mteb_data(root):
    """Tiny train/test files for each local copy of the 25 tasks (workers/mteb_local_tasks.py)."""
    sys.path.insert(0, str(WORKERS))
    import importlib

    tasks = importlib.import_module("mteb_local_tasks")
    sys.path.pop(0)
    out = root / "mteb_data"
    for n, name in enumerate(tasks.CLASSIFICATION):
        rows = [{"text": f"{WORDS[(i + n) % 6]} {i}", "label": i % 2} for i in range(20)]
        _write_jsonl(out / name / "train.jsonl", rows[:16])
        _write_jsonl(out / name / "test.jsonl", rows[16:] + rows[:4])
    for n, name in enumerate(tasks.STS):
        _write_jsonl(out / name / "test.jsonl", [
            {"sentence1": WORDS[i % 6], "sentence2": WORDS[(i * 5 + n) % 6] + f" {i}",
             "score": float((i * 7 + n) % 6)} for i in range(10)])
    for n, name in enumerate(tasks.PAIRS):
        _write_jsonl(out / name / "test.jsonl", [
            {"sentence1": WORDS[i % 6], "sentence2": WORDS[(i + i % 2 + n) % 6], "labels": i % 2}
            for i in range(10)])
    return out


def _pile(root):
    """A tiny indexed dataset in the tokenizer's id range (what $PILE would be)."""
    import numpy as np
    import torch
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    prefix = str(root / "pile" / "val_text_document")
    os.makedirs(os.path.dirname(prefix))
    rng = np.random.default_rng(0)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=DType.optimal_dtype(320))
    for n in (40, 90, 25):
        builder.add_document(torch.from_numpy(rng.integers(0, 320, n)), [n])
    builder.finalize(prefix + ".idx")
    return prefix


@pytest.fixture(scope="module")
def guide(tmp_path_factory):
    from megatron_nitp.data.tokenizer_training import train_sentencepiece

    pytest.importorskip("lm_eval", reason='lm-eval not installed: pip install -e ".[eval]"')
    pytest.importorskip("mteb", reason='mteb not installed: pip install -e ".[mteb]"')
    root = tmp_path_factory.mktemp("guide")
    sp = train_sentencepiece(
        [f"The quick brown fox {i} jumps over the lazy dog; numbers 123{i} and words."
         for i in range(300)] + ["Hello world, hello megatron. Question answer sleeps."] * 20,
        320, str(root / "sp.model"))
    (root / "bin").mkdir()
    for name, body in STUBS.items():
        (root / "bin" / name).write_text("#!/bin/bash\n" + body)
        (root / "bin" / name).chmod(0o755)
    env = _env(root)

    # 1. [submit]: every run's script written; the four TRAINED ones run, two at a time.
    first, *rest = _blocks("submit")
    trained = " ".join(sorted(TRAINED))
    hooks = f"""
eval "$(declare -f train | sed '1s/^train/guide_train/')"
train() {{  # the guide's train() with the tiny override as the last --config
  case $2 in *moe_*) tiny={WORKERS}/guide_tiny_moe.yaml ;; *) tiny={WORKERS}/guide_tiny_dense.yaml ;; esac
  guide_train "$@" "$tiny"
}}
sbatch() {{
  local name; name=$(basename "$1" .sbatch); echo "$1" >> "$CK/submitted.txt"
  case " {trained} " in *" $name "*) ;; *) return 0 ;; esac
  local port; port=$(command python -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')
  MASTER_PORT=$port CONTAINER_IMAGE= REPO_DIR=$PWD TOKENIZER_MODEL={sp} GPUS_PER_NODE=0 TASKS_PER_NODE=1 \\
    CPUS_PER_TASK=1 SAVE_INTERVAL=1 SLURM_JOB_ID=1 SLURM_NNODES=1 SLURM_JOB_NODELIST=localhost \\
    SLURM_JOB_NAME=$name bash "$1" > "$CK/$name.out" 2>&1 &
  pids="$pids $!"
  if [ $(echo $pids | wc -w) -ge 2 ]; then wait_all; fi
}}
wait_all() {{
  for p in $pids; do wait $p || {{ tail -n 40 "$CK"/*.out; exit 1; }}; done; pids=""
}}
pids=""
"""
    _bash(first + hooks + "\n".join(rest) + "\nwait_all\n", env, 900)
    ck = root / "ck"
    for path in (ck / "submitted.txt").read_text().split():
        name = os.path.basename(path)[: -len(".sbatch")]
        if name not in TRAINED:  # the trained run of the same kind stands in
            kind = "dense_2b" if name.startswith("dense") else "moe_3b_a0.5b"
            (ck / name).rmdir()
            (ck / name).symlink_to(ck / f"{kind}_{'ntp' if name.endswith('_ntp') else 'nitp'}")

    # 2. [eval]: recorded in order, then run in one process with the tiny stand-ins.
    tasks = root / "lm_eval_tasks"
    _write_jsonl(tasks / "tiny_mc_train.jsonl", MC_TRAIN)
    _write_jsonl(tasks / "tiny_mc_test.jsonl", MC_TEST)
    sys.path.insert(0, str(WORKERS))
    from guide_runner import tiny_task

    sys.path.pop(0)
    from megatron_nitp.evaluation.downstream import TASKS

    for t in TASKS.values():
        (tasks / f"{tiny_task(t.name)}.yaml").write_text(
            TASK_YAML.format(task=tiny_task(t.name), dir=tasks))
    commands = root / "commands.jsonl"
    record = (f"python() {{ command python -c 'import json, sys; print(json.dumps("
              f"{{\"argv\": sys.argv[1:]}}))' \"$@\" >> {commands}; }}\n")
    _bash(record + "\n".join(_blocks("eval")), dict(env, PILE=_pile(root)), 120)
    proc = subprocess.run(
        [sys.executable, str(WORKERS / "guide_runner.py"), str(commands), str(tasks),
         str(WORKERS / "mteb_local_tasks.py")], cwd=str(REPO_ROOT), capture_output=True,
        text=True, timeout=1500, env=dict(env, MTEB_LOCAL_DIR=str(_mteb_data(root))))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return {"root": root, "ck": ck, "sp": sp, "runner": proc.stdout,
            "commands": [json.loads(x)["argv"] for x in commands.read_text().splitlines()]}


def test_the_guides_training_runs_train_from_their_slurm_scripts(guide):
    ck = guide["ck"]
    scripts = (ck / "submitted.txt").read_text().split()
    assert len(scripts) == 35 == len(set(scripts))
    for name in TRAINED:
        out = (ck / f"{name}.out").read_text()
        assert "ranks exited with status 0" in out, out[-3000:]
        assert (ck / name / "iter_0000001").is_dir() and (ck / name / "iter_0000002").is_dir()
        train = [json.loads(x) for x in (ck / name / "log.jsonl").read_text().splitlines()]
        train = [r for r in train if r.get("split") != "valid"]
        assert [r["iteration"] for r in train] == [1, 2], train
        nitp = [r.get("nitp_loss") for r in train]
        if name.endswith("_ntp"):
            assert "NITP off" in out and all(v is None for v in nitp), out[-2000:]
        else:
            assert all(v is not None and math.isfinite(v) for v in nitp), train
        # App. D's metrics every step (the tiny config's interval), as the paper configs log them.
        assert all(r.get("effective_rank") for r in train), train[0]


def test_every_eval_command_of_the_guide_ran(guide):
    tools = [os.path.basename(c[0]) for c in guide["commands"]]
    done = re.findall(r"^DONE (\S+) 0 ", guide["runner"], re.M)
    assert done == tools, (done, tools)
    assert {"eval_downstream.py", "plot_run.py", "eval_lm_loss.py",
            "eval_representations.py"} <= set(tools), tools
    assert tools.count("eval_downstream.py") >= 20 and tools.count("plot_run.py") == 3


def test_the_tables_are_in_the_papers_layout_with_every_cell_scored(guide):
    from megatron_nitp.evaluation.downstream import SUITES, TASKS

    tables = guide["ck"] / "tables"
    t1 = (tables / "table1_3b.md").read_text()
    for method in ("NTP", "NITP"):
        row = next(line for line in t1.splitlines() if line.startswith(f"| {method} |"))
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert len(cells) == len(SUITES["moe"]) + 1 and "—" not in row, row
        for name, cell in zip(SUITES["moe"], cells):  # MC_TEST's two documents
            assert float(cell) in ((50.0,) if TASKS[name].num_fewshot == 0 else (0, 50, 100)), row
    assert "| paper NTP | 34.60 | 11.00 |" in t1, t1
    fig4 = (tables / "fig4.md").read_text()
    assert sum(line.startswith("| λ ") for line in fig4.splitlines()) == 5, fig4
    for name in ("table2_2b.md", "table5.md", "table3_shift.md"):
        assert "—" not in (tables / name).read_text().split("**paper")[0], name
    # Fig. 1c/d: every checkpoint of the run scored (iterations 1 and 2).
    results = guide["ck"] / "evals" / "moe_9b_a1b_nitp_fig1" / "results"
    assert sorted(os.listdir(results)) == ["iter_0000001.json", "iter_0000002.json"]
    for png in ("fig1c.png", "fig1d.png", "fig1ab_9b.png", "fig3.png", "fig5.png"):
        assert (guide["ck"] / "figs" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_table6_groups_and_an_mteb_score_recomputed_from_transformers(guide, tmp_path):
    import numpy as np
    import sentencepiece
    import torch
    from scipy.stats import spearmanr
    from transformers import AutoModelForCausalLM

    from megatron_nitp.evaluation.probe import MTEB_PAPER_GROUPS, MTEB_PAPER_TABLE6

    reports = {m: json.loads((guide["ck"] / "tables" / f"mteb_moe_3b_a0.5b_{m}.json").read_text())
               for m in ("ntp", "nitp")}
    for report in reports.values():
        scores = report["mteb"]
        assert len(scores) == 25 and set(report["mteb_groups"]) == set(MTEB_PAPER_TABLE6)
        for group, tasks in MTEB_PAPER_GROUPS.items():
            expected = 100 * sum(scores[t] for t in tasks) / len(tasks)
            assert report["mteb_groups"][group] == pytest.approx(expected, abs=1e-9), group
        assert report["mteb_groups"]["Overall (25 tasks)"] == pytest.approx(
            100 * sum(scores.values()) / 25, abs=1e-9)
        assert report["mteb_settings"]["mteb_version"] == "2.12.0"
    assert reports["ntp"]["mteb"] != reports["nitp"]["mteb"]  # each model's own embeddings

    # STSBenchmark of the NITP run: Spearman of the cosine of mean-pooled, L2-normalised final
    # hidden states (transformers on an export of the same checkpoint) against the gold scores.
    hf = tmp_path / "hf"
    subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "convert_checkpoint.py"),
                    "megatron-to-hf", "--load", str(guide["ck"] / "moe_3b_a0.5b_nitp"),
                    "--save", str(hf)], check=True, capture_output=True, timeout=300,
                   env=_env(guide["root"]))
    model = AutoModelForCausalLM.from_pretrained(str(hf), torch_dtype=torch.float32).eval()
    sp = sentencepiece.SentencePieceProcessor(model_file=guide["sp"])
    rows = [json.loads(x) for x in (guide["root"] / "mteb_data" / "STSBenchmark" /
                                    "test.jsonl").read_text().splitlines()]

    def embed(text):
        with torch.no_grad():
            h = model.model(input_ids=torch.tensor([sp.encode(text)])).last_hidden_state[0]
        v = h.mean(0)
        return (v / v.norm()).numpy()

    cos = [float(np.dot(embed(r["sentence1"]), embed(r["sentence2"]))) for r in rows]
    expected = spearmanr(cos, [r["score"] for r in rows]).correlation
    assert reports["nitp"]["mteb"]["STSBenchmark"] == pytest.approx(expected, abs=1e-6)

    # The exported model (--hf) embeds as the checkpoint (--load) does.
    out = tmp_path / "hf_mteb.json"
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "eval_representations.py"), "--hf", str(hf),
         "--no-probe", "--mteb", "--mteb-tasks", "STSBenchmark,SprintDuplicateQuestions,"
         "Banking77Classification", "--mteb-task-module", str(WORKERS / "mteb_local_tasks.py"),
         "--out", str(out)], capture_output=True, text=True, timeout=600,
        env=_env(guide["root"], MTEB_LOCAL_DIR=str(guide["root"] / "mteb_data")))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    hf_report = json.loads(out.read_text())
    for task, score in hf_report["mteb"].items():
        assert score == pytest.approx(reports["nitp"]["mteb"][task], abs=1e-6), task
    assert set(hf_report["mteb_groups"]) == {"STS / Similarity", "Retrieval / Dup.",
                                             "Classification", "Overall (3 tasks)"}


def test_the_validation_cross_entropies(guide):
    tables = guide["ck"] / "tables"
    for run in ("moe_3b_a0.5b_ntp", "moe_3b_a0.5b_nitp", "moe_9b_a1b_ntp", "moe_9b_a1b_nitp",
                "dense_3b_ntp", "dense_3b_nitp"):
        (r,) = json.loads((tables / f"pile_{run}.json").read_text())["datasets"].values()
        assert r["tokens"] == 40 + 90 + 25 - 1, r
        assert 4 < r["cross_entropy"] < 7.5, r  # ~ln(320) = 5.77 after 2 steps
