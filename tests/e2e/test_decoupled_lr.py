"""Megatron-LM's --decoupled-lr / --decoupled-min-lr (issue #15 item 5): the input embedding and
output layer weights follow their own peak/final lr on the main warmup and decay; every other
parameter (the NITP head included) trains exactly as in a run without the flags. Checked on the
saved weights: the first step's lr is the warmup's start (0), so after iteration 1 both runs hold
the initial weights and the same Adam moments; iteration 2 then moves each weight by its group's
lr x the same AdamW step, so the embedding and output layer move decoupled-lr / lr (5) times as
far as without the flags, and every other weight identically. At PP2 (tied embeddings: both
copies) and with the distributed optimizer at DP2, the losses and weights equal one process's."""

import shutil

import pytest
import torch

from tests.e2e.engine_runner import TINY_GPT, read_log, run_engine

BASE = TINY_GPT + ["--nitp", "--global-batch-size", "2", "--untie-embeddings-and-output-weights",
                   "--train-iters", "3", "--save-interval", "1", "--lr-warmup-init", "0"]
DECOUPLED = ["--decoupled-lr", "5e-3", "--decoupled-min-lr", "1e-4"]
EMBEDDING_OR_OUTPUT = ("embedding.word_embeddings.weight", "output_layer.weight")


def _weights(iter_dir, tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    plain = tmp_path / f"{iter_dir.parent.name}_{iter_dir.name}.pt"
    dcp_to_torch_save(str(iter_dir), str(plain))
    state = torch.load(plain, weights_only=False)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
            and not k.startswith("optimizer.") and "_extra_state" not in k}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decoupled")
    out = {}
    for name, flags in (("base", []), ("decoupled", DECOUPLED)):
        run_engine(BASE + flags + ["--save", tmp / name, "--log-jsonl", tmp / f"{name}.jsonl"])
        out[name] = (read_log(tmp / f"{name}.jsonl")[0],
                     _weights(tmp / name / "iter_0000001", tmp),
                     _weights(tmp / name / "iter_0000002", tmp))
    out["dir"] = tmp
    return out


def test_embedding_and_output_follow_the_decoupled_schedule(runs):
    base, dec = runs["base"][0], runs["decoupled"][0]
    assert [r["lr"] for r in dec] == [r["lr"] for r in base] == pytest.approx([1e-3, 5e-4, 0.0])
    # warmup to 5e-3 in one iteration, then cosine to --decoupled-min-lr at iteration 3
    assert [r["decoupled_lr"] for r in dec] == pytest.approx([5e-3, (5e-3 + 1e-4) / 2, 1e-4])
    assert "decoupled_lr" not in base[0]


def test_only_the_embedding_and_output_weights_take_the_decoupled_lr(runs):
    w0 = runs["base"][1]
    assert all(torch.equal(w0[k], v) for k, v in runs["decoupled"][1].items())  # lr 0 at step 1
    base, dec = runs["base"][2], runs["decoupled"][2]
    assert set(base) == set(dec) == set(w0)
    assert any(k.startswith("nitp_head.") for k in base)
    for name in base:
        if name in EMBEDDING_OR_OUTPUT:
            moved, moved_base = dec[name] - w0[name], base[name] - w0[name]
            # fp32 differences of ~0.02-sized weights: compare the moves well above rounding
            big = moved_base.abs() > 1e-5
            assert big.sum() > 500, name  # the rows of the batch's tokens, at least
            ratio = moved[big].double() / moved_base[big].double()
            assert torch.allclose(ratio, torch.full_like(ratio, 5.0), rtol=1e-2), name
        else:  # the NITP head, decoder layers, norms: exactly as without the flags
            assert torch.equal(dec[name], base[name]), name
            assert not torch.equal(base[name], w0[name]), name  # it trained


@pytest.mark.parametrize("flags, message", [
    (["--decoupled-lr", "1e-4", "--decoupled-min-lr", "1e-3"],
     "error: --decoupled-min-lr 0.001: must not exceed --decoupled-lr 0.0001"),
    (["--decoupled-lr", "-1"], "error: --decoupled-lr -1.0: must be >= 0"),
])
def test_bad_decoupled_values_are_one_line(flags, message):
    res = run_engine(TINY_GPT + flags + ["--dry-run"], expect_code=2)
    assert message in res.stdout and res.stdout.count("error:") == 1


def test_decoupled_min_lr_alone_is_one_notice():
    res = run_engine(TINY_GPT + ["--decoupled-min-lr", "1e-5", "--dry-run"])
    assert res.stdout.count("--decoupled-min-lr without --decoupled-lr has no effect") == 1


def test_resume_keeps_the_groups_and_override_changes_the_decoupled_lr(runs, tmp_path):
    """megatron-core 0.16.1 alone fails this resume (the decoupled group has the default
    group's checkpoint key) and would keep the checkpoint's group lr under the override."""
    ck = tmp_path / "ck"
    shutil.copytree(runs["dir"] / "decoupled" / "iter_0000001", ck / "iter_0000001")
    (ck / "latest_checkpointed_iteration.txt").write_text("1")
    res = run_engine(BASE + ["--decoupled-lr", "2e-3", "--decoupled-min-lr", "1e-4", "--load", ck,
                             "--override-opt_param-scheduler", "--log-jsonl", tmp_path / "r.jsonl"])
    assert "decoupled_lr 0.005 in the checkpoint, 0.002 from --decoupled-lr" in res.stdout
    resumed = read_log(tmp_path / "r.jsonl")[0]
    assert [r["iteration"] for r in resumed] == [2, 3]
    assert resumed[0]["lr"] == runs["decoupled"][0][1]["lr"]  # the main schedule is unchanged
    assert resumed[0]["lm_loss"] == runs["decoupled"][0][1]["lm_loss"]  # same weights loaded
    assert [r["decoupled_lr"] for r in resumed] == pytest.approx([(2e-3 + 1e-4) / 2, 1e-4])


# -- other layouts: the same weights take the decoupled lr as at one process -----------------
# Tied embeddings (the default): at PP2 the last stage holds a copy of the word embeddings as its
# output weight, which megatron-core keeps equal to the first stage's by all-reducing their
# gradients; both copies must take --decoupled-lr. From one seed checkpoint (--finetune: the
# layouts start from the same weights), gbs 4 so that DP2 splits it.
SEEDED = TINY_GPT + ["--nitp", "--global-batch-size", "4", "--train-iters", "3",
                     "--lr-warmup-init", "0", "--save-interval", "2"] + DECOUPLED
LAYOUTS = {"pp2_tied": ["--pipeline-model-parallel-size", "2"],
           "dp2_distributed_optimizer": ["--use-distributed-optimizer"]}


def _seeded_run(d, name, seed, extra=(), nproc=1):
    run_engine(SEEDED + [*extra, "--load", seed, "--finetune", "--save", d / name,
                         "--log-jsonl", d / f"{name}.jsonl"], nproc=nproc)
    return ({r["iteration"]: (r["lm_loss"], r["nitp_loss"], r["decoupled_lr"])
             for r in read_log(d / f"{name}.jsonl")[0]},
            _weights(d / name / "iter_0000002", d))


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    d = tmp_path_factory.mktemp("decoupled_layouts")
    run_engine(SEEDED + ["--train-iters", "0", "--save", d / "seed"])
    seed = _weights(d / "seed" / "iter_0000000", d)
    losses, weights = _seeded_run(d, "one", d / "seed")
    # The reference is decoupled: step 2 (the first with lr > 0) moves each weight by at most
    # about its group's lr (Adam), 5e-3 for the tied embedding and 1e-3 for every other one.
    for name, w in weights.items():
        move = (w - seed[name]).abs().max().item()
        peak = 5e-3 if name == "embedding.word_embeddings.weight" else 1e-3
        assert 0.9 * peak < move < 1.1 * peak, (name, move)
    return d, losses, weights


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_a_layout_gives_the_decoupled_lr_to_the_same_weights(layout, one_process):
    d, ref_losses, ref_weights = one_process
    losses, weights = _seeded_run(d, layout, d / "seed", LAYOUTS[layout], nproc=2)
    # Iteration 3's loss follows step 2's update of both tied copies (at PP2 a last-stage copy
    # at --lr instead gives lm loss 5.5267 for 5.5058).
    assert sorted(losses) == sorted(ref_losses) == [1, 2, 3]
    for it, (lm, nitp, lr) in ref_losses.items():
        assert losses[it][0] == pytest.approx(lm, rel=1e-6), (layout, it)
        assert losses[it][1] == pytest.approx(nitp, rel=1e-6), (layout, it)
        assert losses[it][2] == lr
    # Every weight after step 2 as at one process (moves of 1e-3 and 5e-3; the groups' lrs
    # differ by 4e-3), the embedding's first-stage copy included.
    assert set(weights) == set(ref_weights)
    for name, w in weights.items():
        assert torch.allclose(w, ref_weights[name], rtol=0, atol=1e-7), (layout, name)
