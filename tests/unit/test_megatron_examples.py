"""Issue #15: Megatron-LM's own example launch scripts, unchanged, through `--dry-run`.

The argument lists are data (megatron_examples_data.py, expanded from the scripts at the cited
ref). Each script either passes `--dry-run` as is, with WORLD_SIZE set to its layout, or is
refused in one line naming one of the flags listed in REFUSED for it: the only refusals allowed,
each with the work that will honour it. Every listed refusal is checked on its own (the script
without the listed flags passes; each one added back is refused by name), so the table below is
exactly what blocks each script. When a flag becomes honoured (another branch of issue #15),
its entry here is removed and the test then requires the script to pass.

The dry runs need no Transformer Engine, GPU, data or tokenizer files (the scripts' paths are
under /lustre, absent here): those are listed as "needs ... at run time". Parameter counts are
compared with Megatron-LM's for the same flags, computed independently below.
"""

import os
import re

import pytest

from megatron_examples_data import SCRIPTS
from megatron_nitp.training.engine import pretrain

# flag -> (why it is refused today, flags standing in for it while the others are checked).
# The stand-ins keep the model the same: a vocabulary of the script tokenizer's size.
GPT2_VOCAB = ["--vocab-size", "50257"]  # GPT-2's BPE vocabulary (gpt2-vocab.json)
MIXTRAL_VOCAB = ["--vocab-size", "32000"]  # Llama2Tokenizer's, without its file here
REFUSED = {
    "gpt3_175b": {
        # No --tokenizer-type in the script (Megatron-LM 0.16.1 itself raises "None tokenizer
        # is not implemented" there): GPT-2's files need GPT2BPETokenizer named.
        "--vocab-file": ("needs --tokenizer-type", GPT2_VOCAB),
        "--merge-file": ("needs --tokenizer-type", []),
        # Honoured with --train-samples (tests/e2e/test_batch_rampup.py); the script gives
        # --train-iters 500000, and Megatron-LM 0.16.1 itself asserts "expected no batch-size
        # rampup for iteration-based training" (arguments.py validate_args): refused the same.
        "--rampup-batch-size": ("iteration-based: Megatron-LM 0.16.1 refuses it too", []),
    },
    "llama3_8b_fp8": {},
    "mixtral_8x7b": {},
    "deepseek_v2_lite": {},
    "qwen3_8b": {},
    "qwen3_30b_a3b": {},
    "deepseek_v3_ddp": {},
}
# The script's default (USE_MEGATRON_FSDP=1): Megatron-FSDP on top of the above.
REFUSED["deepseek_v3"] = {
    **REFUSED["deepseek_v3_ddp"],
    "--ckpt-format": ("fsdp_dtensor: torch_dist only", []),
    **{flag: ("Megatron-FSDP", []) for flag in (
        "--use-megatron-fsdp", "--data-parallel-sharding-strategy", "--fsdp-double-buffer",
        "--use-nccl-ub", "--init-model-with-meta-device", "--megatron-fsdp-grad-comm-dtype",
        "--megatron-fsdp-main-grads-dtype")},
}


def _without(argv, flags):
    """argv without the given flags and their values."""
    out, dropping = [], False
    for a in argv:
        if a.startswith("--"):
            dropping = a in flags
        if not dropping:
            out.append(a)
    return out


def _with_only(argv, flag):
    """The flag with its values, as the script gives it (the last occurrence)."""
    i = max(k for k, a in enumerate(argv) if a == flag)
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    return argv[i:j]


def cleared_argv(name):
    """The script's argv without its refused flags, with their stand-ins."""
    s, refused = SCRIPTS[name], REFUSED[name]
    argv = _without(s["argv"], set(refused))
    for _, stand_in in refused.values():
        argv += stand_in
    return argv


def dry_run(name, argv, monkeypatch, capsys):
    s = SCRIPTS[name]
    monkeypatch.setenv("WORLD_SIZE", str(s["world_size"]))
    monkeypatch.delenv("RANK", raising=False)
    try:
        code = pretrain(s["family"], argv + ["--dry-run"])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_the_data_is_each_scripts_argument_list():
    assert set(SCRIPTS) == set(REFUSED)
    for name, s in SCRIPTS.items():
        assert s["ref"] in ("core_v0.16.1", "main@d98e8a64ddf34856e74b24714e3bedb2f5a39553"), name
        assert s["path"].startswith("examples/") and s["path"].endswith(".sh"), name
        assert s["argv"][0].startswith("--") and "--dry-run" not in s["argv"], name
        for flag in REFUSED[name]:
            assert flag in s["argv"], (name, flag)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_dry_runs_unchanged_or_is_refused_by_a_listed_flag(name, monkeypatch, capsys):
    code, out, err = dry_run(name, SCRIPTS[name]["argv"], monkeypatch, capsys)
    if not REFUSED[name]:
        assert code == 0, err
        assert "parameters: total" in out and "memory per rank" in out
        return
    assert code == 2, out
    line = err.strip().splitlines()[-1]
    named = re.search(r"(?:error: |argument )(--[\w-]+)", line)
    assert named and named.group(1) in REFUSED[name], \
        f"refused by a flag not listed for {name}: {line}"


@pytest.mark.parametrize("name", sorted(n for n in SCRIPTS if REFUSED[n]))
def test_each_listed_refusal_blocks_its_script_and_nothing_else_does(name, monkeypatch, capsys):
    code, out, err = dry_run(name, cleared_argv(name), monkeypatch, capsys)
    assert code == 0, f"{name} without its listed refusals still fails: {err}"
    assert "parameters: total" in out
    base = cleared_argv(name)
    for flag in REFUSED[name]:
        argv = _without(base, {flag}) + _with_only(SCRIPTS[name]["argv"], flag)
        code, out, err = dry_run(name, argv, monkeypatch, capsys)
        assert code == 2, f"{flag} is listed as refused for {name} but accepted"
        line = err.strip().splitlines()[-1]
        named = re.search(r"(?:error: |argument )(--[\w-]+)", line)
        assert named and named.group(1) == flag, f"{name}: {flag} refused as: {line}"


def test_dry_run_needs_no_te_gpu_or_files_and_says_what_a_run_needs(monkeypatch, capsys):
    code, out, err = dry_run("deepseek_v3_ddp", cleared_argv("deepseek_v3_ddp"), monkeypatch,
                             capsys)
    assert code == 0, err
    assert not os.path.exists("/lustre/data/dsv3_text_document.bin")
    needs = [line for line in out.splitlines() if line.startswith("needs at run time:")]
    assert any("/lustre/data/dsv3_text_document.bin/.idx" in n for n in needs), out
    assert any("--tokenizer-model deepseek-ai/DeepSeek-V3" in n and "local" in n
               for n in needs), out
    import importlib.util

    if importlib.util.find_spec("transformer_engine") is None:
        assert any("Transformer Engine" in n for n in needs), out
    assert "note: vocabulary size unknown without the tokenizer" in out


def test_no_op_flags_give_one_notice_each(monkeypatch, capsys):
    code, out, err = dry_run("deepseek_v3_ddp", cleared_argv("deepseek_v3_ddp"), monkeypatch,
                             capsys)
    assert code == 0, err
    for flag in ("--use-mcore-models", "--use-flash-attn", "--manual-gc", "--manual-gc-interval",
                 "--no-mmap-bin-files", "--no-create-attention-mask-in-dataloader",
                 "--no-check-for-nan-in-loss-and-grad", "--enable-experimental"):
        assert out.count(f"notice: {flag}: accepted as a no-op") == 1, flag


# -- parameter counts: Megatron-LM's for the same flags, computed here independently ---------

def _parameters(out):
    line = next(l for l in out.splitlines() if l.startswith("parameters: total"))
    return int(line.split("(")[1].split(")")[0].replace(",", ""))


def _megatron_dense(L, d, heads, groups, kv, ffn, vocab_padded, *, layernorm, swiglu, bias,
                    learned_positions, seq, untied):
    """Megatron-LM's GPTModel parameters, term by term (one norm = d weights, + d biases for
    LayerNorm)."""
    norm = 2 * d if layernorm else d
    q, k = heads * kv, groups * kv
    attention = d * (q + 2 * k) + q * d + ((q + 2 * k) + d if bias else 0)
    fc1 = (2 if swiglu else 1) * ffn
    mlp = d * fc1 + ffn * d + ((fc1 + d) if bias else 0)
    total = L * (attention + mlp + 2 * norm) + norm
    total += vocab_padded * d * (2 if untied else 1) + (seq * d if learned_positions else 0)
    return total


def test_gpt3_175b_has_megatron_lms_parameter_count(monkeypatch, capsys):
    code, out, err = dry_run("gpt3_175b", cleared_argv("gpt3_175b"), monkeypatch, capsys)
    assert code == 0, err
    # GPT-2's 50257 ids (+1 EOD as NullTokenizer) padded to 128 x TP 8 -> 51200.
    expected = _megatron_dense(96, 12288, 96, 96, 128, 4 * 12288, 51200, layernorm=True,
                               swiglu=False, bias=True, learned_positions=True, seq=2048,
                               untied=False)
    assert expected == 174_615_846_912  # "175B"
    assert _parameters(out) == expected


def test_mixtral_8x7b_has_megatron_lms_parameter_count(monkeypatch, capsys):
    code, out, err = dry_run("mixtral_8x7b", cleared_argv("mixtral_8x7b") + MIXTRAL_VOCAB,
                             monkeypatch, capsys)
    assert code == 0, err
    d, ffn, experts = 4096, 14336, 8
    attention = d * (4096 + 2 * 1024) + 4096 * d
    per_layer = attention + 2 * d + experts * d + experts * 3 * d * ffn  # norms, router, experts
    expected = 32 * per_layer + d + 2 * 32000 * d
    assert expected == 46_702_792_704  # "46.7B"
    assert _parameters(out) == expected
    active = 32 * (attention + 2 * d + experts * d + 2 * 3 * d * ffn) + d + 2 * 32000 * d
    assert f"active {active / 1e9:.3f}B" in out  # 12.9B: top-2 of 8 experts


def _llama3_8b(layernorm):
    # Mock data: NullTokenizer --vocab-size 128256 -> 128257 ids -> padded to 128384.
    return _megatron_dense(32, 4096, 32, 8, 128, 14336, 128384, layernorm=layernorm,
                           swiglu=True, bias=False, learned_positions=False, seq=8192,
                           untied=True)


def test_llama3_8b_has_megatron_lms_parameter_count(monkeypatch, capsys):
    code, out, err = dry_run("llama3_8b_fp8", cleared_argv("llama3_8b_fp8"), monkeypatch, capsys)
    assert code == 0, err
    assert _parameters(out) == _llama3_8b(layernorm=True) == 8_031_576_064


def test_qwen3_8b_count_with_its_vocabulary(monkeypatch, capsys):
    # Qwen3's 151936 ids = --make-vocab-size-divisible-by 1187 x 128: no padding.
    argv = SCRIPTS["qwen3_8b"]["argv"] + ["--vocab-size", "151936"]
    code, out, err = dry_run("qwen3_8b", argv, monkeypatch, capsys)
    assert code == 0, err
    d = 4096
    expected = _megatron_dense(36, d, 32, 8, 128, 12288, 151936, layernorm=False, swiglu=True,
                               bias=False, learned_positions=False, seq=4096, untied=True)
    expected += 36 * 2 * 128  # --qk-layernorm: one RMSNorm of the head dim for q and for k
    assert _parameters(out) == expected  # 8.19B, Qwen3-8B's published size
    assert "note: vocabulary size unknown" not in out


def test_the_entry_script_dry_runs_a_megatron_lm_script_unchanged():
    """`python pretrain_moe_nitp.py <the script's args> --dry-run`, as a user runs it."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    s = SCRIPTS["qwen3_30b_a3b"]
    env = dict(os.environ, WORLD_SIZE=str(s["world_size"]), PYTHONPATH=repo,
               OMP_NUM_THREADS="1")
    env.pop("RANK", None)
    res = subprocess.run([sys.executable, os.path.join(repo, "pretrain_moe_nitp.py"),
                          *s["argv"], "--dry-run"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "parameters: total 30.532B" in res.stdout  # Qwen3-30B-A3B: 30.5B, 3.3B active
    assert "active 3.353B" in res.stdout
    assert "memory per rank (Megatron-LM's theoretical estimate)" in res.stdout
    assert "needs at run time: --tokenizer-model Qwen/Qwen3-30B-A3B" in res.stdout


def test_dry_run_prints_the_nitp_overhead_of_a_megatron_lm_script(monkeypatch, capsys):
    argv = cleared_argv("mixtral_8x7b") + ["--nitp", "--nitp-target-layer", "6"]
    code, out, err = dry_run("mixtral_8x7b", argv, monkeypatch, capsys)
    assert code == 0, err
    head = 3 * 4 * 4096 * 4096  # SwiGLU d -> 4d -> d; TP 1, on the last of the 4 stages
    assert f"NITP head {head / 1e6:.1f}M (training only)" in out
    line = next(l for l in out.splitlines() if l.startswith("NITP overhead per rank"))
    assert f"{head / 1e6:.1f}M head parameters" in line
    # Megatron-LM's bytes per parameter with the script's --use-distributed-optimizer at DP 8.
    assert f"+{head * (6 + 12 / 8) / 2**20:.0f} MB" in line
