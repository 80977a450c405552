"""Megatron-LM's speed flags (issue #17): same names and defaults; on CPU the fusions, which have
no kernel here, are switched off with one notice line; the DDP overlaps run (gloo) and change
no number."""

import pytest

from megatron_nitp.parallel.speed import speed_settings
from tests.helpers import suite_parse_args as parse_args
from megatron_nitp.training.validation import ConfigError, validate_args
from tests.e2e.engine_runner import TINY_GPT, losses_by_iteration, read_log, run_engine


def test_defaults_are_megatron_lms_and_cpu_switches_the_fusions_off_in_one_notice():
    args = parse_args([])
    assert (args.gradient_accumulation_fusion, args.bias_swiglu_fusion, args.bias_dropout_fusion,
            args.masked_softmax_fusion, args.apply_rope_fusion) == (True,) * 5
    assert not (args.overlap_grad_reduce or args.overlap_param_gather
                or args.cross_entropy_loss_fusion or args.no_persist_layer_norm)
    settings, notice = speed_settings(args)
    assert not any(settings[k] for k in ("gradient_accumulation_fusion", "bias_activation_fusion",
                                         "bias_dropout_fusion", "masked_softmax_fusion",
                                         "apply_rope_fusion"))
    assert notice.count("\n") == 0 and "--gradient-accumulation-fusion" in notice
    assert "--bias-gelu-fusion" not in notice  # SwiGLU model: the GELU fusion is not used
    off = parse_args(["--no-gradient-accumulation-fusion", "--no-bias-swiglu-fusion",
                      "--no-bias-dropout-fusion", "--no-masked-softmax-fusion",
                      "--no-rope-fusion"])
    assert speed_settings(off)[1] is None  # nothing asked for that cannot run: no notice


@pytest.mark.parametrize("argv, message", [
    (["--overlap-param-gather", "--overlap-grad-reduce"], "needs --use-distributed-optimizer"),
    (["--overlap-param-gather", "--use-distributed-optimizer"], "and --overlap-grad-reduce"),
    (["--finetune"], "--finetune: needs --load"),
])
def test_flag_combinations_megatron_lm_rejects_are_rejected(argv, message):
    with pytest.raises(ConfigError, match=message):
        validate_args(parse_args(argv), world_size=1)


def test_overlapped_grad_reduce_and_param_gather_log_the_same_numbers(tmp_path):
    run = TINY_GPT + ["--nitp", "--train-iters", "3", "--global-batch-size", "8",
                      "--use-distributed-optimizer", "--eval-interval", "2", "--eval-iters", "1",
                      "--save", tmp_path / "ckpt", "--save-interval", "2"]
    logs = {}
    for name, extra in (("plain", []), ("overlap", ["--overlap-grad-reduce",
                                                    "--overlap-param-gather"])):
        res = run_engine(run + extra + ["--log-jsonl", tmp_path / f"{name}.jsonl",
                                        "--save", tmp_path / name], nproc=2)
        assert res.stdout.count("notice: on CPU, no kernel for") == 1
        train, valid = read_log(tmp_path / f"{name}.jsonl")
        logs[name] = (losses_by_iteration(train), losses_by_iteration(valid, ("lm_loss",)))
    assert logs["overlap"] == logs["plain"]
