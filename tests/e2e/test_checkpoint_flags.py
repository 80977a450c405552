"""Megatron-LM's checkpoint flags (issue #15 item 6), on a tiny NITP GPT, one process.

One 2-iteration checkpoint with the optimizer (A) and one saved with --no-save-optim (B), from the
same seed. Megatron-LM's meaning: --no-load-optim resumes the model, iteration and consumed
samples with a fresh optimizer and scheduler, which is exactly what resuming B gives; a full
resume differs from both after the first resumed step. --pretrained-checkpoint with an empty
--load is --finetune from it.
"""

import pytest
from torch.distributed.checkpoint import FileSystemReader

from tests.helpers import suite_parse_args as parse_args
from tests.e2e.engine_runner import TINY_GPT, read_log, run_engine

RUN = TINY_GPT + ["--nitp", "--train-iters", "4"]
KEYS = ("lm_loss", "nitp_loss", "grad_norm", "lr")


def _log(path):
    return {r["iteration"]: tuple(r[k] for k in KEYS) for r in read_log(path)[0]}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt_flags")
    run_engine(RUN + ["--save", d / "A", "--exit-interval", "2", "--log-jsonl", d / "a.jsonl"])
    run_engine(RUN + ["--save", d / "B", "--exit-interval", "2", "--no-save-optim",
                      "--log-jsonl", d / "b.jsonl"])
    return d


def _tensor_keys(ckpt):
    return set(FileSystemReader(str(ckpt / "iter_0000002")).read_metadata().state_dict_metadata)


def test_no_save_optim_writes_no_optimizer_state(ckpts):
    assert _log(ckpts / "a.jsonl") == _log(ckpts / "b.jsonl")  # same first two steps
    with_optim, without = _tensor_keys(ckpts / "A"), _tensor_keys(ckpts / "B")
    assert any(k.startswith("optimizer.") for k in with_optim)
    assert not any(k.startswith("optimizer.") for k in without)
    assert {k for k in with_optim if not k.startswith("optimizer.")} == without


def test_no_load_optim_is_a_fresh_optimizer_at_the_saved_iteration(ckpts, tmp_path):
    run_engine(RUN + ["--load", ckpts / "A", "--log-jsonl", tmp_path / "full.jsonl"])
    res = run_engine(RUN + ["--load", ckpts / "A", "--no-load-optim",
                            "--log-jsonl", tmp_path / "nlo.jsonl"])
    assert "--no-load-optim: model, iteration and consumed samples loaded" in res.stdout
    res = run_engine(RUN + ["--load", ckpts / "B", "--log-jsonl", tmp_path / "nso.jsonl"])
    assert "saved with --no-save-optim" in res.stdout
    full, nlo, nso = (_log(tmp_path / f"{n}.jsonl") for n in ("full", "nlo", "nso"))
    assert sorted(nlo) == sorted(full) == [3, 4]  # the iteration is resumed
    assert nlo == nso  # exactly: both are a fresh optimizer + scheduler at iteration 2
    assert nlo[3][0] == full[3][0]  # same weights, same batch: same first loss
    assert nlo[3][3] != full[3][3]  # a fresh scheduler: warmup again
    assert nlo[4][0] != full[4][0]  # the fresh optimizer's step differs


def test_pretrained_checkpoint_is_finetune_when_load_is_empty(ckpts, tmp_path):
    fresh = tmp_path / "fresh"
    res = run_engine(RUN + ["--train-iters", "2", "--load", fresh, "--save", fresh,
                            "--pretrained-checkpoint", ckpts / "A",
                            "--log-jsonl", tmp_path / "pre.jsonl"])
    assert "finetuning from --pretrained-checkpoint" in res.stdout
    assert "resumed from" in res.stdout and "at iteration 0" in res.stdout
    run_engine(RUN + ["--train-iters", "2", "--load", ckpts / "A", "--finetune",
                      "--log-jsonl", tmp_path / "ft.jsonl"])
    pre, ft = _log(tmp_path / "pre.jsonl"), _log(tmp_path / "ft.jsonl")
    assert sorted(pre) == [1, 2] and pre == ft
    # The run saved into --load: the same command now resumes it, not the pretrained one.
    assert (fresh / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


def test_dist_ckpt_strictness_is_megatron_cores(ckpts):
    # NITP -> NTP: the checkpoint's head weights are "missing" keys (in the checkpoint, not
    # requested: megatron-core's terminology); its default (assume_ok_unexpected) loads,
    # raise_all refuses in one line.
    ntp = RUN + ["--no-nitp", "--load", ckpts / "A"]
    run_engine(ntp)
    res = run_engine(ntp + ["--dist-ckpt-strictness", "raise_all"], expect_code=2)
    assert "found in the checkpoint are missing in the provided sharded state dict" in res.stdout
    assert res.stdout.count("error:") == 1


def test_use_checkpoint_args_takes_the_model_from_the_checkpoint(ckpts, capsys):
    from megatron_nitp.training.arguments import parse_args as bare_parse_args

    # bare: the suite's explicit settings would be "given" flags here
    args = bare_parse_args(["--load", str(ckpts / "A"), "--use-checkpoint-args",
                            "--seq-length", "16", "--no-swiglu", "--hidden-size", "48"])
    # Megatron-LM's rule: unforced fields only when not given, forced ones always.
    assert (args.num_layers, args.num_attention_heads, args.kv_channels) == (2, 2, 16)
    assert (args.seq_length, args.hidden_size) == (16, 48)
    assert args.swiglu is True and args.ffn_hidden_size == 128  # the checkpoint's 4 x 32
    assert "--use-checkpoint-args: from" in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--ckpt-format", "torch"], "error: --ckpt-format torch: megatron-nitp reads and writes "
                                 "torch_dist only"),
    (["--async-save"], "error: --async-save: not supported"),
    (["--use-checkpoint-args"], "error: --use-checkpoint-args: needs --load"),
])
def test_unsupported_checkpoint_flags_are_one_line(flags, message):
    res = run_engine(RUN + flags, expect_code=2)
    assert message in res.stdout
    assert res.stdout.count("error:") == 1


def test_other_checkpoint_formats_are_named(tmp_path):
    from megatron_nitp.training.checkpoint_io import CheckpointError
    from megatron_nitp.training.checkpointing import verify_checkpoint_files

    legacy = tmp_path / "legacy"
    (legacy / "mp_rank_00").mkdir(parents=True)
    (legacy / "mp_rank_00" / "model_optim_rng.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="legacy torch checkpoint .--ckpt-format torch."):
        verify_checkpoint_files(str(legacy))
    zarr = tmp_path / "zarr"
    zarr.mkdir()
    (zarr / "metadata.json").write_text('{"sharded_backend": "zarr"}')
    (zarr / "common.pt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a zarr checkpoint; megatron-nitp reads "
                                              "torch_dist only"):
        verify_checkpoint_files(str(zarr))
