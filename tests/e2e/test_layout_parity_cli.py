"""Checking a new layout from the command line (issue #17), as a user would on a new cluster:
one seed checkpoint (`--train-iters 0 --save SEED`: the initialised model as iteration 0), then
every layout `--load SEED --finetune` (weights only; iteration 0, fresh optimizer and scheduler)
logs the same LM and NITP losses as one process, fp32, 1e-5 relative, at every iteration.

Without the seed the layouts would not even start equal: megatron initialises each TP shard
(and each expert) from its own RNG stream.
"""

import pytest

from tests.e2e.engine_runner import TINY_GPT, TINY_MOE, losses_by_iteration, read_log, run_engine

ITERS = 3
COMMON = ["--nitp", "--train-iters", str(ITERS), "--global-batch-size", "4"]
# 4 layers so that PP2 has 2 per stage and VPP one per virtual stage.
DENSE = TINY_GPT + ["--num-layers", "4"] + COMMON  # (the last flag wins)
MOE = TINY_MOE + COMMON
LAST_STAGE_K = ["--nitp-target-layer", "3"]  # layers 3-4 live on the last of 2 stages
# name: (model, extra flags, processes); k = 1 (first stage) unless LAST_STAGE_K. PP2 with k on
# the first stage (z carried) and TP2 x PP2 are the equivalence suite's in-process layouts; here
# pp2_vpp2 carries z through the CLI.
LAYOUTS = {
    "tp2_sp": ("dense", ["--tensor-model-parallel-size", "2", "--sequence-parallel"], 2),
    "pp2_k_on_last_stage": ("dense", ["--pipeline-model-parallel-size", "2"] + LAST_STAGE_K, 2),
    "pp2_vpp2": ("dense", ["--pipeline-model-parallel-size", "2",
                           "--num-layers-per-virtual-pipeline-stage", "1"], 2),
    "dp2_distributed_optimizer": ("dense", ["--use-distributed-optimizer"], 2),
    "moe_ep2": ("moe", ["--expert-model-parallel-size", "2"], 2),
}
REL = 1e-5


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("layout_parity")


@pytest.fixture(scope="module")
def seeds(work):
    out = {}
    for model, (run, family) in {"dense": (DENSE, "gpt"), "moe": (MOE, "moe")}.items():
        path = work / f"seed_{model}"
        res = run_engine(run + ["--train-iters", "0", "--save", path], family=family)
        assert "saved checkpoint iteration 0" in res.stdout
        assert (path / "latest_checkpointed_iteration.txt").read_text().strip() == "0"
        out[model] = path
    return out


def _run(work, seeds, name, model, extra, nproc, save=()):
    run, family = (DENSE, "gpt") if model == "dense" else (MOE, "moe")
    log = work / f"{name}.jsonl"
    res = run_engine(run + extra + ["--load", seeds[model], "--finetune", "--log-jsonl", log,
                                    *save], nproc=nproc, family=family)
    assert "--finetune: model weights of iteration 0 loaded" in res.stdout
    return losses_by_iteration(read_log(log)[0], ("lm_loss", "nitp_loss"))


@pytest.fixture(scope="module")
def one_process(work, seeds):
    runs = {"dense_k1": ("dense", [], ["--save", work / "trained"]),  # for the --finetune test
            "dense_k3": ("dense", LAST_STAGE_K, []),
            "moe_k1": ("moe", [], [])}
    return {key: _run(work, seeds, f"one_{key}", model, extra, 1, save)
            for key, (model, extra, save) in runs.items()}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_from_the_seed_logs_the_one_process_losses(layout, work, seeds, one_process):
    model, extra, nproc = LAYOUTS[layout]
    ref = one_process[f"{model}_k{3 if '--nitp-target-layer' in extra else 1}"]
    got = _run(work, seeds, layout, model, extra, nproc)
    assert sorted(got) == list(range(1, ITERS + 1))
    for it in ref:
        for name, x, y in zip(("lm_loss", "nitp_loss"), ref[it], got[it]):
            assert abs(x - y) <= REL * abs(x), f"{layout} iteration {it} {name}: {y} vs {x}"


def test_finetune_starts_at_iteration_0_from_a_trained_checkpoint(work, one_process, tmp_path):
    """--finetune loads the weights of a later iteration but neither its iteration nor its
    optimizer: the run trains its own ITERS iterations from 1."""
    ckpt = work / "trained"
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(ITERS)
    log = tmp_path / "ft.jsonl"
    res = run_engine(DENSE + ["--load", ckpt, "--finetune", "--log-jsonl", log])
    assert f"model weights of iteration {ITERS} loaded" in res.stdout
    train, _ = read_log(log)
    assert [r["iteration"] for r in train] == list(range(1, ITERS + 1))
    # A fresh scheduler: one warmup step to the peak (the loaded one had decayed to 0).
    assert train[0]["lr"] == pytest.approx(1e-3)
