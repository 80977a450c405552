"""--bf16 from the command line (issue #17): the model is built in bf16 the Megatron-LM way
(Float16Module, megatron's mixed-precision optimizer with fp32 main weights).

- one process, plain optimizer, and DP2 with the distributed optimizer: a run that saves at
  iteration 5 and goes on to 10, and a resume from that iteration-5 checkpoint, log the same
  iterations 6-10 exactly (LM loss, NITP loss, grad norm);
- DP2 + distributed optimizer and TP2 + SP stay within 1% of the one-process bf16 run at every
  one of 10 steps, LM and NITP loss (the NITP per-token losses are computed in fp32). All runs
  start from one fp32 seed checkpoint (`--train-iters 0 --save`, then `--load --finetune`):
  megatron initialises a TP shard from its own RNG stream, so TP2's own init differs from TP1's.
"""

import pytest

from tests.e2e.engine_runner import (TINY_GPT, checkpoint_at, losses_by_iteration, read_log,
                                     run_engine)

ITERS = 10
RUN = TINY_GPT + ["--nitp", "--bf16", "--train-iters", str(ITERS), "--global-batch-size", "4",
                  "--save-interval", "5"]
LAYOUTS = {"dp2_distributed_optimizer": ["--use-distributed-optimizer"],
           "tp2_sp": ["--tensor-model-parallel-size", "2", "--sequence-parallel"]}
REL = 0.01


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    path = tmp_path_factory.mktemp("bf16_seed") / "seed"
    run_engine(TINY_GPT + ["--nitp", "--train-iters", "0", "--save", path])
    return ["--load", str(path), "--finetune"]


def _train_and_resume(tmp_path, name, extra, nproc, seed):
    log, ckpt = tmp_path / f"{name}.jsonl", tmp_path / name
    run_engine(RUN + extra + seed + ["--save", ckpt, "--log-jsonl", log], nproc=nproc)
    at5 = checkpoint_at(ckpt, 5, tmp_path / f"{name}_at5")
    resumed = tmp_path / f"{name}_resumed.jsonl"
    res = run_engine(RUN + extra + ["--load", at5, "--log-jsonl", resumed], nproc=nproc)
    assert "at iteration 5" in res.stdout
    return (losses_by_iteration(read_log(log)[0]), losses_by_iteration(read_log(resumed)[0]))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, seed):
    return _train_and_resume(tmp_path_factory.mktemp("bf16_one"), "one", [], 1, seed)


@pytest.fixture(scope="module")
def dp2(tmp_path_factory, seed):
    return _train_and_resume(tmp_path_factory.mktemp("bf16_dp2"), "dp2",
                             LAYOUTS["dp2_distributed_optimizer"], 2, seed)


@pytest.mark.parametrize("which", ["one_process_plain_optimizer", "dp2_distributed_optimizer"])
def test_bf16_resume_continues_bit_identically(which, one_process, dp2):
    straight, resumed = one_process if which.startswith("one") else dp2
    assert sorted(straight) == list(range(1, ITERS + 1))
    assert resumed == {i: straight[i] for i in range(6, ITERS + 1)}  # exact


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_bf16_parallel_layout_stays_within_one_percent_of_one_process(layout, one_process, dp2,
                                                                      seed, tmp_path):
    if layout == "dp2_distributed_optimizer":
        got = dp2[0]
    else:
        log = tmp_path / "log.jsonl"
        run_engine(RUN + LAYOUTS[layout] + seed + ["--log-jsonl", log], nproc=2)
        got = losses_by_iteration(read_log(log)[0])
    ref = one_process[0]
    assert sorted(got) == sorted(ref)
    worst = 0.0
    for it in ref:
        for name, x, y in zip(("lm_loss", "nitp_loss"), ref[it], got[it]):
            rel = abs(x - y) / abs(x)
            worst = max(worst, rel)
            assert rel <= REL, f"{layout} iteration {it} {name}: {y} vs one process {x}"
    print(f"{layout}: worst relative loss difference over {ITERS} bf16 steps {worst:.2e}")
