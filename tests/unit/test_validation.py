"""Configuration validation (issue #6.1): every bad setting is one ConfigError naming the option(s)
and what would be valid, raised before any process group or model exists.

The table runs `validate_args(parse_args(argv), world_size=N)` in-process: both are pure
functions, so each case takes milliseconds. tests/e2e/test_reliability_validation_cli.py runs a
few of the same cases through the real command line (exit code 2, one line, no traceback).
"""

import os
import time

import pytest
import torch  # noqa: F401  (imported here so the timing below measures the checks only)

from tests.helpers import suite_parse_args as parse_args
from megatron_nitp.training.validation import ConfigError, validate_args

# Small but valid: 4 layers, d 64, 4 heads, seq 128, micro-batch 2.
BASE = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4"]
MOE = ["--num-experts", "4", "--moe-router-topk", "2"]

# id: (argv, world size, substrings the one-line message must contain)
CASES = {
    "lr decay length zero": (["--lr-decay-iters", "0"], 1, ["--lr-decay-iters 0", ">= 1"]),
    "lr decay length negative is not blamed on warmup": (
        ["--lr-decay-iters", "-3"], 1, ["--lr-decay-iters -3", ">= 1"]),
    "target layer above the range": (
        ["--nitp", "--nitp-target-layer", "4"], 1, ["--nitp-target-layer 4", "[0, 4)"]),
    "target layer negative": (
        ["--nitp", "--nitp-target-layer", "-1"], 1, ["--nitp-target-layer -1", "[0, 4)"]),
    "loss weight negative": (
        ["--nitp", "--nitp-loss-weight", "-0.5"], 1, ["--nitp-loss-weight -0.5", ">= 0"]),
    "loss weight nan": (["--nitp", "--nitp-loss-weight", "nan"], 1, ["--nitp-loss-weight nan",
                                                                     "finite"]),
    "loss weight inf": (["--nitp", "--nitp-loss-weight", "inf"], 1, ["--nitp-loss-weight inf",
                                                                     "finite"]),
    "unknown loss type": (["--nitp", "--nitp-loss-type", "cosin"], 1,
                          ["--nitp-loss-type 'cosin'", "cosine, mse, smooth_l1, kl"]),
    "NITP head width not divisible by TP": (
        ["--hidden-size", "66", "--kv-channels", "16", "--nitp", "--nitp-head-ffn-multiplier",
         "1", "--tensor-model-parallel-size", "4"], 4,
        ["--nitp-head-ffn-multiplier 1", "66", "--tensor-model-parallel-size 4"]),
    "attention heads not divisible by TP": (
        ["--num-attention-heads", "6", "--hidden-size", "96", "--tensor-model-parallel-size", "4"],
        4, ["--num-attention-heads 6", "--tensor-model-parallel-size 4"]),
    "query groups not divisible by TP": (
        ["--group-query-attention", "--num-query-groups", "1", "--tensor-model-parallel-size",
         "2"], 2, ["--num-query-groups 1", "TP 2"]),
    "sequence parallel: seq not divisible by TP": (
        ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--seq-length", "127"], 2,
        ["--seq-length 127", "TP 2 x CP 1 = 2", "--sequence-parallel"]),
    "context parallel: seq not divisible by 2 x CP": (
        ["--context-parallel-size", "2", "--seq-length", "126"], 2,
        ["--seq-length 126", "2 x --context-parallel-size 2"]),
    "world not divisible by TP x PP x CP": (
        ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"], 6,
        ["world size 6", "--tensor-model-parallel-size 2", "--pipeline-model-parallel-size 2"]),
    "EP does not divide DP x CP": (
        MOE + ["--expert-model-parallel-size", "4", "--tensor-model-parallel-size", "2"], 4,
        ["--expert-model-parallel-size 4", "= 2"]),
    "EP does not divide the experts": (
        ["--num-experts", "6", "--expert-model-parallel-size", "4"], 4,
        ["--expert-model-parallel-size 4", "--num-experts 6"]),
    "global batch not a multiple of micro x DP": (
        ["--global-batch-size", "6", "--micro-batch-size", "2"], 2,
        ["--global-batch-size 6", "--micro-batch-size 2", "data-parallel size 2"]),
    "layers not divisible by PP": (
        ["--pipeline-model-parallel-size", "3"], 3,
        ["--num-layers 4", "--pipeline-model-parallel-size 3"]),
    "virtual pipeline chunk does not divide a stage": (
        ["--num-layers", "8", "--pipeline-model-parallel-size", "2",
         "--num-layers-per-virtual-pipeline-stage", "3", "--global-batch-size", "8"], 2,
        ["--num-layers-per-virtual-pipeline-stage 3", "4 layers per pipeline stage"]),
    "virtual pipeline: microbatches not a multiple of PP": (
        ["--num-layers", "8", "--pipeline-model-parallel-size", "2",
         "--num-layers-per-virtual-pipeline-stage", "2", "--global-batch-size", "6"], 2,
        ["--global-batch-size 6", "microbatches (3)", "--pipeline-model-parallel-size 2"]),
    "virtual pipeline without PP": (
        ["--num-layers-per-virtual-pipeline-stage", "2"], 1,
        ["--num-layers-per-virtual-pipeline-stage", "--pipeline-model-parallel-size > 1"]),
    "MoE top-k without experts": (["--moe-router-topk", "4"], 1,
                                  ["--moe-router-topk", "without --num-experts"]),
    "MoE expert width without experts": (["--moe-ffn-hidden-size", "32"], 1,
                                         ["--moe-ffn-hidden-size", "without --num-experts"]),
    "MoE layer pattern without experts": (["--moe-layer-freq", "([0]*1+[1]*3)"], 1,
                                          ["--moe-layer-freq", "without --num-experts"]),
    "EP without experts": (["--expert-model-parallel-size", "2"], 2,
                           ["--expert-model-parallel-size", "without --num-experts"]),
    "top-k above the experts": (["--num-experts", "4", "--moe-router-topk", "8"], 1,
                                ["--moe-router-topk 8", "<= --num-experts 4"]),
    "MoE pattern of the wrong length": (
        MOE + ["--moe-layer-freq", "([0]*1+[1]*15)"], 1,
        ["--moe-layer-freq", "16 entries", "--num-layers 4"]),
    "MoE pattern with a bad entry": (MOE + ["--moe-layer-freq", "[0,1,2,1]"], 1,
                                     ["--moe-layer-freq", "0 (dense) or 1 (MoE)"]),
    "MoE frequency out of range": (MOE + ["--moe-layer-freq", "0"], 1,
                                   ["--moe-layer-freq 0", "[1, --num-layers 4]"]),
    "CP with the local implementation": (
        ["--context-parallel-size", "2", "--transformer-impl", "local"], 2,
        ["--context-parallel-size", "transformer_engine"]),
    "CUDA graphs with NITP": (["--nitp", "--enable-cuda-graph"], 1,
                              ["--enable-cuda-graph", "not supported with --nitp"]),
    "MoE all-to-all overlap with NITP": (
        MOE + ["--nitp", "--overlap-moe-expert-parallel-comm"], 1,
        ["--overlap-moe-expert-parallel-comm", "not supported with --nitp"]),
    "no stop-grad under full recompute": (
        ["--nitp", "--nitp-no-stop-grad", "--recompute-granularity", "full",
         "--recompute-method", "uniform", "--recompute-num-layers", "1"], 1,
        ["--nitp-no-stop-grad", "--recompute-granularity full"]),
    "max bad steps zero": (["--max-bad-steps", "0"], 1, ["--max-bad-steps 0", ">= 1"]),
    "keep-last-n zero": (["--keep-last-n-checkpoints", "0"], 1,
                         ["--keep-last-n-checkpoints 0", ">= 1"]),
    "exit duration not positive": (["--save", "ck", "--exit-duration-in-mins", "-1"], 1,
                                   ["--exit-duration-in-mins -1", "positive"]),
    # MTP (models/mtp.py) and uneven pipelines (models/pipeline_layout.py), Megatron-LM's rules
    "MTP with learned positions": (
        ["--mtp-num-layers", "1", "--position-embedding-type", "learned_absolute"], 1,
        ["--mtp-num-layers", "rope"]),
    "MTP zero layers": (["--mtp-num-layers", "0"], 1, ["--mtp-num-layers 0", ">= 1"]),
    "MTP uniform recompute of 2 layers": (
        ["--mtp-num-layers", "1", "--position-embedding-type", "rope",
         "--recompute-granularity", "full", "--recompute-method",
         "uniform", "--recompute-num-layers", "2"], 1, ["--recompute-num-layers 2", "MTP"]),
    "layout and first-stage layers": (
        ["--pipeline-model-parallel-size", "2", "--pipeline-model-parallel-layout", "Et|tttL",
         "--decoder-first-pipeline-num-layers", "1"], 2,
        ["--pipeline-model-parallel-layout", "--decoder-first"]),
    "layout with the wrong layer count": (
        ["--pipeline-model-parallel-size", "2", "--pipeline-model-parallel-layout", "Et|ttL"], 2,
        ["--pipeline-model-parallel-layout 'Et|ttL'", "--num-layers"]),
    "layout stages not a multiple of PP": (
        ["--pipeline-model-parallel-size", "2", "--pipeline-model-parallel-layout", "Et|t|ttL"],
        2, ["--pipeline-model-parallel-layout", "3 stages"]),
    "layout and virtual stages": (
        ["--pipeline-model-parallel-size", "2", "--pipeline-model-parallel-layout", "Et|tttL",
         "--num-virtual-stages-per-pipeline-rank", "2"], 2, ["at most one"]),
    "first stage takes every layer": (
        ["--pipeline-model-parallel-size", "2", "--decoder-first-pipeline-num-layers", "4"], 2,
        ["--num-layers 4", "0 layers left"]),
    "first stage not a multiple of the virtual stages": (
        ["--pipeline-model-parallel-size", "2", "--decoder-first-pipeline-num-layers", "1",
         "--num-virtual-stages-per-pipeline-rank", "2"], 2,
        ["--decoder-first-pipeline-num-layers 1", "multiple of the 2 virtual"]),
    "first-stage layers without PP": (["--decoder-first-pipeline-num-layers", "1"], 1,
                                      ["--decoder-first/last", "> 1"]),
    "virtual stages without PP": (["--num-virtual-stages-per-pipeline-rank", "2"], 1,
                                  ["--num-virtual-stages-per-pipeline-rank", "> 1"]),
}


def _validate(argv, world_size):
    return validate_args(parse_args(BASE + argv), world_size=world_size)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_configuration_is_one_line_naming_the_option(case):
    argv, world_size, expected = CASES[case]
    if "--pipeline-model-parallel-layout" in argv:
        # megatron-core's own layout parser checks the string: its import is not the check's
        from megatron.core.transformer import pipeline_parallel_layer_layout  # noqa: F401
    start = time.process_time()  # CPU time: the machine may be shared
    with pytest.raises(ConfigError) as e:
        _validate(argv, world_size)
    assert time.process_time() - start < 1  # pure checks: nothing is built
    message = str(e.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_transformer_engine_requested_without_it_installed():
    import importlib.util

    if importlib.util.find_spec("transformer_engine") is not None:
        pytest.skip("Transformer Engine is installed here")
    with pytest.raises(ConfigError, match="--transformer-impl transformer_engine: .* "
                                          "--transformer-impl local"):
        _validate(["--transformer-impl", "transformer_engine"], 1)


def test_validation_does_not_import_megatron_core_when_transformer_engine_is_absent():
    """A config error costs the torch import, not megatron-core's (seconds more of CPU)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from megatron_nitp.training.arguments import parse_args\n"
            "from megatron_nitp.training.validation import validate_args\n"
            "validate_args(parse_args(['--nitp', '--num-layers', '4', '--hidden-size', '64', "
            "'--num-attention-heads', '4', '--seq-length', '32', '--micro-batch-size', '2', "
            "'--lr', '1e-3', '--train-iters', '2']), world_size=1)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'megatron'))\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=120)
    assert out.returncode == 0, out.stderr
    import importlib.util

    if importlib.util.find_spec("transformer_engine") is None:
        assert out.stdout.strip().splitlines()[-1] == "[]"  # after the defaults' notices


def test_sequence_parallel_without_tp_warns_and_is_disabled(capsys):
    args = parse_args(BASE + ["--sequence-parallel"])
    validate_args(args, world_size=1)
    assert args.sequence_parallel is False
    assert "warning: --sequence-parallel" in capsys.readouterr().out


@pytest.mark.parametrize("ramp,iters", [
    ([], 10),  # 40 samples / global batch 4
    # batches 2, 2, 2, 2 (consumed 0..6), then 4 at 8 <= the ramp's 8 samples: 5 steps, 12
    # samples; then (40 - 12) // 4 = 7 whole batches (Megatron-LM's update_train_iters)
    (["--rampup-batch-size", "2", "2", "8"], 12),
])
def test_schedule_checks_change_nothing_and_validation_derives_train_iters(ramp, iters):
    from megatron_nitp.training.sample_schedule import sample_schedule_errors

    args = parse_args(BASE + ["--train-samples", "40", "--global-batch-size", "4", *ramp])
    args.data_parallel_size = 1  # what validation derives before the schedule checks
    before = dict(vars(args))
    assert list(sample_schedule_errors(args)) == [] and vars(args) == before
    validate_args(args, world_size=1)
    assert args.train_iters == iters


def test_preemption_exit_without_save_warns(capsys):
    validate_args(parse_args(BASE + ["--exit-signal-handler"]), world_size=1)
    assert "warning: --exit-signal-handler without --save" in capsys.readouterr().out


def test_bf16_on_cpu_is_allowed_but_a_gpu_without_bf16_is_rejected(monkeypatch):
    """torch's CPU kernels compute in bf16, so --bf16 runs (slowly) on CPU: allowed. A GPU
    without bf16 (pre-Ampere) is the "cannot" case."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _validate(["--bf16"], 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ConfigError, match="--bf16: this GPU has no bf16 support"):
        _validate(["--bf16"], 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    _validate(["--bf16"], 1)


@pytest.mark.parametrize("argv,world_size", [
    ([], 1),
    (["--nitp", "--nitp-target-layer", "0"], 1),  # 0 = the embedding output
    (["--nitp", "--nitp-target-layer", "3", "--nitp-loss-type", "mse"], 1),
    (["--tensor-model-parallel-size", "2", "--sequence-parallel", "--nitp"], 2),
    (["--pipeline-model-parallel-size", "2", "--num-layers-per-virtual-pipeline-stage", "1",
      "--global-batch-size", "8"], 4),
    (MOE + ["--expert-model-parallel-size", "2", "--moe-layer-freq", "([0]*1+[1]*3)", "--nitp"],
     2),
    (MOE + ["--expert-model-parallel-size", "2", "--tensor-model-parallel-size", "2"], 4),
])
def test_good_configuration_passes(argv, world_size):
    _validate(argv, world_size)


def test_paper_configs_pass_at_their_intended_scale():
    """Every shipped config validates with 8 data-parallel replicas of its model layout."""
    root = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "configs")
    for name in sorted(os.listdir(root)):
        if not name.endswith(".yaml"):
            continue
        args = parse_args(["--config", os.path.join(root, name)])
        model = (args.tensor_model_parallel_size * args.pipeline_model_parallel_size
                 * args.context_parallel_size)
        world = 8 * model
        try:
            validate_args(args, world_size=world)
        except ConfigError as e:
            if "transformer_engine" in str(e) or "Transformer Engine" in str(e):
                continue  # CP / TE-only layouts: validated on GPU
            raise AssertionError(f"{name} at world {world}: {e}")


# -- --load before any heavy work (resolve._check_resume_target; no checkpoint needed) ---------

def _resume_args(tmp_path, load, save=None):
    argv = BASE + ["--load", str(load)] + (["--save", str(save)] if save else [])
    return parse_args(argv)


def test_load_pointing_at_nothing_is_an_error(tmp_path):
    from megatron_nitp.training.resolve import _check_resume_target

    with pytest.raises(ConfigError, match="no such directory"):
        _check_resume_target(_resume_args(tmp_path, tmp_path / "typo"), False)


def test_load_without_checkpoint_is_an_error_unless_it_is_also_the_save_dir(tmp_path, capsys):
    from megatron_nitp.training.resolve import _check_resume_target

    empty = tmp_path / "ckpt"
    empty.mkdir()
    (empty / "iter_0000003.tmp").mkdir()  # a killed first save is not a checkpoint
    with pytest.raises(ConfigError, match="no checkpoint in this directory"):
        _check_resume_target(_resume_args(tmp_path, empty, tmp_path / "other"), False)
    # The requeue pattern: --load == --save, nothing saved yet -> start fresh, with a notice.
    for target in (empty, tmp_path / "not_yet_created"):
        args = _resume_args(tmp_path, target, target)
        _check_resume_target(args, False)
        assert args.load is None
        assert "starting fresh" in capsys.readouterr().out


# -- data and tokenizer files (megatron_nitp.data: validate_data_args, build_tokenizer) ---------
# The data layer owns these checks (and tests them in depth in test_data_*.py); here they stand
# in the same table: one line naming the flag, before anything is built.

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A megatron indexed dataset of 8 documents whose largest token id is 56."""
    import numpy
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    prefix = str(tmp_path_factory.mktemp("data") / "corpus_text_document")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=numpy.int32)
    for i in range(8):
        builder.add_document(torch.arange(i, i + 50), [50])
    builder.finalize(prefix + ".idx")
    return prefix


def _null(vocab):
    from megatron_nitp.data.tokenizers import build_tokenizer

    return build_tokenizer("NullTokenizer", None, vocab)


DATA_CASES = {
    "data path missing": (lambda c, t: ([str(t / "nope")], _null(100)),
                          ["--data-path", "missing", "nope.bin"]),
    "data path with extension": (lambda c, t: ([c + ".bin"], _null(100)),
                                 ["--data-path", "without extension"]),
    "neither data path nor mock data": (lambda c, t: (None, _null(100)),
                                        ["--data-path: required", "--mock-data"]),
    "tokenizer vocabulary smaller than the data's ids": (
        lambda c, t: ([c], _null(40)), ["--data-path", "token id 56", "does not match"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_is_one_line_naming_the_flag(case, corpus, tmp_path):
    from megatron_nitp.data.datasets import validate_data_args

    make, expected = DATA_CASES[case]
    data_path, tokenizer = make(corpus, tmp_path)
    with pytest.raises(SystemExit) as e:  # DataArgumentError
        validate_data_args(data_path, tokenizer)
    message = str(e.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_matching_data_and_tokenizer_pass(corpus):
    from megatron_nitp.data.datasets import validate_data_args

    validate_data_args([corpus], _null(100))


@pytest.mark.parametrize("model,expected", [
    (None, "--tokenizer-model: required"),
    ("/nonexistent/tokenizer.model", "--tokenizer-model"),
])
def test_missing_tokenizer_file_names_the_flag(model, expected):
    from megatron_nitp.data.tokenizers import build_tokenizer

    with pytest.raises(SystemExit, match=expected):
        build_tokenizer("SentencePieceTokenizer", model, None)


@pytest.mark.parametrize("argv,option", [
    (["--train-iters", "20", "--lr-warmup-iters", "30"], "--lr-warmup-iters"),
    (["--train-iters", "100", "--lr-warmup-iters", "10", "--lr-decay-style", "WSD",
      "--lr-wsd-decay-iters", "95"], "--lr-wsd-decay-iters"),
    (["--lr", "1e-4", "--min-lr", "1e-3"], "--min-lr"),
])
def test_schedule_lengths_are_checked_before_megatron_asserts(argv, option):
    with pytest.raises(ConfigError, match=option):
        validate_args(parse_args(argv), world_size=1)


@pytest.mark.parametrize("prefix", ["--exit-signal-h", "--nitp-loss-w", "--tensor-model-parallel"])
def test_flag_prefixes_are_not_abbreviations(prefix, capsys):
    # Megatron-LM's parser has allow_abbrev=False; a prefix must be an error, not another flag.
    with pytest.raises(SystemExit) as e:
        parse_args(BASE + [prefix, "1"])
    assert e.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
