"""tools/convert_checkpoint.py and tools/generate.py, end to end.

Importing megatron-core costs ~12 s of CPU per process, so one module fixture does the work with
few processes (workers/convert_checks.py runs the CLIs' main() in-process; commands that need
their own processes run as subprocesses, two at a time):
1. `torchrun -n 2 workers/make_checkpoints.py`: tiny NITP checkpoints in the engine's format,
   dense at TP2 (SentencePiece tokenizer, tied) and PP2 with VPP (untied), MoE (dense first
   layer, shared expert) at EP2 and at TP2 (MoE norms under Transformer Engine's names), every
   weight moved away from its init;
2. megatron-to-hf of each (+ an MoE export with --keep-nitp-head split into shards, + a bf16
   export); megatron logits vs `AutoModelForCausalLM` logits (fp32, max abs diff <= 1e-4);
   20 greedy tokens of tools/generate.py vs transformers' generate(do_sample=False);
3. hf-to-megatron of the MoE+head export at PP2+VPP (the tool's own 2-process torchrun) and of the
   bf16 dense export (1 process), then megatron-to-hf again: the safetensors are bit-identical;
4. the training engine resumes from that release checkpoint, trains one step, saves; its
   checkpoint converts back with equal logits;
5. the CLIs themselves: summaries, text prompts, one-line errors for bad inputs.
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import suite_flags

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "workers")
CONVERT = os.path.join(ROOT, "tools", "convert_checkpoint.py")
GENERATE = os.path.join(ROOT, "tools", "generate.py")
LAYOUTS = ["dense_tp2", "dense_pp2_vpp", "moe_ep2", "moe_tp2"]
TEXT = ["--prompt", "Hello world, the quick", "--max-new-tokens", "12", "--print-ids"]
# The MoE model of workers/make_checkpoints.py, as engine flags (what hf-to-megatron prints).
ENGINE_MOE = ["--num-layers", "4", "--hidden-size", "64", "--ffn-hidden-size", "96",
              "--num-attention-heads", "4", "--group-query-attention", "--num-query-groups", "2",
              "--rotary-base", "500", "--norm-epsilon", "1e-5", "--num-experts", "4",
              "--moe-router-topk", "2", "--moe-ffn-hidden-size", "32",
              "--moe-shared-expert-intermediate-size", "48", "--moe-layer-freq", "[0,1,1,1]",
              "--untie-embeddings-and-output-weights", "--nitp", "--nitp-target-layer", "1",
              "--nitp-loss-weight", "0.8", "--tokenizer-type", "NullTokenizer",
              "--vocab-size", "100", "--make-vocab-size-divisible-by", "16", "--mock-data",
              "--train-iters", "1", "--seq-length", "32", "--micro-batch-size", "2",
              "--transformer-impl", "local", "--moe-token-dispatcher-type", "allgather"]


def _run(cmd, timeout=900, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT, start_new_session=True)
    if check and proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return proc


def _parallel(cmds):
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(_run, cmds))


def _py(*args):
    return [sys.executable, *args]


def _results(proc):
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")][-1]
    return json.loads(line.split(" ", 1)[1])


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("convert"))
    checks = os.path.join(WORKERS, "convert_checks.py")
    times, t = {}, time.time()
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          os.path.join(WORKERS, "make_checkpoints.py"), "--out", f"{root}/ckpt",
          "--layouts", ",".join(LAYOUTS)])
    times["make checkpoints"], t = time.time() - t, time.time()

    compare, cli_export, gen_load = _parallel([
        _py(checks, "export-compare", "--root", root, "--layouts", ",".join(LAYOUTS)),
        _py(CONVERT, "megatron-to-hf", "--load", f"{root}/ckpt/dense_pp2_vpp",
            "--save", f"{root}/cli/dense_pp2_vpp"),
        _py(GENERATE, "--load", f"{root}/ckpt/dense_tp2", *TEXT)])
    times["export + compare"], t = time.time() - t, time.time()

    # hf-to-megatron at PP2 + VPP: the tool re-runs itself under torchrun with 2 processes.
    cli_import, gen_hf = _parallel([
        _py(CONVERT, "hf-to-megatron", "--load", f"{root}/hf_head/moe_ep2",
            "--save", f"{root}/rt/moe_head_pp2_vpp", "--pipeline-model-parallel-size", "2",
            "--num-layers-per-virtual-pipeline-stage", "1"),
        _py(GENERATE, "--hf", f"{root}/hf/dense_tp2", *TEXT)])
    times["import (torchrun 2) + generate --hf"], t = time.time() - t, time.time()

    # The training engine resumes from the release checkpoint (fresh optimizer), trains a step
    # and saves: that checkpoint is exported and compared too.
    engine = _run(_py(os.path.join(ROOT, "pretrain_moe_nitp.py"), *suite_flags(ENGINE_MOE),
                      *ENGINE_MOE,
                      "--load", f"{root}/rt/moe_head_pp2_vpp", "--save", f"{root}/engine"))
    times["engine step"], t = time.time() - t, time.time()

    roundtrip = _run(_py(
        checks, "roundtrip", "--root", root,
        "--import", f"{root}/hf_bf16/dense_tp2={root}/rt/dense_bf16",
        "--reexport", f"dense_bf16={root}/hf_bf16/dense_tp2:{root}/rt/dense_bf16",
        "--reexport", f"moe_head_pp2_vpp={root}/hf_head/moe_ep2:{root}/rt/moe_head_pp2_vpp:head",
        "--compare", f"{root}/engine={root}/hf_engine"))
    times["round trips"] = time.time() - t
    sys.stderr.write(f"\ntest_convert timings (s): "
                     f"{json.dumps({k: round(v, 1) for k, v in times.items()})}\n")
    return dict(root=root, results=_results(compare), roundtrip=_results(roundtrip),
                cli_export=cli_export, cli_import=cli_import, generations=[gen_load, gen_hf],
                engine=engine)


@pytest.mark.parametrize("name", LAYOUTS + ["moe_ep2_sharded"])
def test_exported_logits_equal_megatron_logits(ws, name):
    r = ws["results"][name]
    assert r["hf_class"] == ("Qwen2MoeForCausalLM" if name.startswith("moe") else "LlamaForCausalLM")
    assert r["max_abs_logit_diff"] <= 1e-4, r
    assert r["logit_scale"] > 0.1  # not a comparison of two near-zero outputs


@pytest.mark.parametrize("name", LAYOUTS)
def test_greedy_generation_equals_transformers_generate(ws, name):
    r = ws["results"][name]
    assert r["megatron_ids"] == r["hf_ids"]
    assert len(r["hf_ids"]) == 20 or r["hf_ids"][-1] == r["megatron_ids"][-1]


@pytest.mark.parametrize("name", LAYOUTS)
def test_export_has_no_nitp_tensors_by_default(ws, name):
    r = ws["results"][name]
    assert r["nitp_tensors"] == [] and not [f for f in r["files"] if "nitp" in f]
    assert {"config.json", "generation_config.json", "model.safetensors"} <= set(r["files"])


def test_keep_nitp_head_writes_the_checkpoint_head(ws):
    head = ws["results"]["head"]
    assert head["keys"] == ["down_proj.weight", "gate_proj.weight", "up_proj.weight"]
    assert head["equal"] and head["fc1_norm"] > 0
    assert head["json"]["target_layer"] == 1 and head["json"]["loss_weight"] == 0.8
    assert head["json"]["shift"] == 1 and head["json"]["loss_type"] == "cosine"
    assert head["json"]["head_ffn_multiplier"] == 4
    files = os.listdir(f"{ws['root']}/hf_head/moe_ep2")
    assert "model.safetensors.index.json" in files  # --max-shard-size split the weights
    assert ws["results"]["moe_ep2_sharded"]["nitp_tensors"] == []


def test_export_cli_prints_a_summary(ws):
    out = ws["cli_export"].stdout
    assert "wrote LlamaForCausalLM" in out and "saved at TP1 PP2 EP1 VPP" in out
    assert "dtype float32" in out and "parameters:" in out
    assert "dropped: NITP head" in out
    assert "NITP head" in ws["cli_export"].stdout and "writing safetensors" in ws["cli_export"].stderr


def test_sentencepiece_tokenizer_exported_for_autotokenizer(ws):
    tok = ws["results"]["tokenizer"]
    assert all(tok["same"]) and tok["eos"][0] == tok["eos"][1]


@pytest.mark.parametrize("name", ["dense_bf16", "moe_head_pp2_vpp"])
def test_hf_to_megatron_to_hf_is_bit_identical(ws, name):
    r = ws["roundtrip"][name]
    assert r["mismatched"] == []
    assert r["dtypes"] == (["torch.bfloat16"] if name == "dense_bf16" else ["torch.float32"])


def test_hf_to_megatron_writes_a_release_checkpoint_at_the_chosen_layout(ws):
    ckpt = f"{ws['root']}/rt/moe_head_pp2_vpp"
    assert open(f"{ckpt}/latest_checkpointed_iteration.txt").read().strip() == "0"
    config = json.load(open(f"{ckpt}/iter_0000000/run_config.json"))
    assert config["release"] and config["model_only"] and config["iteration"] == 0
    assert config["args"]["pipeline_model_parallel_size"] == 2
    assert config["args"]["num_layers_per_virtual_pipeline_stage"] == 1
    assert config["nitp"]["enabled"] and config["nitp"]["target_layer"] == 1
    # written by the two ranks of the chosen layout
    assert {"__0_0.distcp", "__1_0.distcp", "metadata.json"} <= set(os.listdir(f"{ckpt}/iter_0000000"))
    assert not os.path.exists(f"{ckpt}/.hf_import_staging")
    out = ws["cli_import"].stdout
    assert "NITP head restored" in out and "layout: TP1 PP2 EP1" in out
    dense = json.load(open(f"{ws['root']}/rt/dense_bf16/iter_0000000/run_config.json"))
    assert dense["args"]["bf16"] and dense["tokenizer"]["type"] == "SentencePieceTokenizer"
    assert os.path.isfile(dense["tokenizer"]["model"])


def test_engine_resumes_from_a_converted_checkpoint_and_its_save_converts_back(ws):
    out = ws["engine"].stdout
    assert "model-only checkpoint" in out and "no NITP head" not in out
    r = ws["roundtrip"][f"{ws['root']}/engine"]
    assert r["hf_class"] == "Qwen2MoeForCausalLM"
    assert r["max_abs_logit_diff"] <= 1e-4 and r["megatron_ids"] == r["hf_ids"]
    assert "from iteration 1" in r["summary"] and "NITP head:" in r["summary"]


def _last_ids(proc):
    return [int(t) for t in proc.stdout.strip().splitlines()[-1].split(",")]


def test_generate_text_prompt_same_tokens_for_checkpoint_and_export(ws):
    megatron, hf = ws["generations"]
    assert _last_ids(megatron) == _last_ids(hf)
    for proc in (megatron, hf):
        assert "prompt: 'Hello world, the quick'" in proc.stdout


def test_generate_sampling_same_tokens_for_checkpoint_and_export(ws):
    megatron, hf = ws["results"]["sampling"]
    assert megatron == hf and len(megatron) >= 1


@pytest.mark.parametrize("argv, message", [
    (["megatron-to-hf", "--load", "/nonexistent/ckpt", "--save", "{tmp}/x"], "no such directory"),
    (["megatron-to-hf", "--load", "{tmp}", "--save", "{tmp}/x"], "not a megatron-nitp checkpoint"),
    (["hf-to-megatron", "--load", "{tmp}/gpt2", "--save", "{tmp}/y"], "unknown architecture"),
    (["hf-to-megatron", "--load", "{tmp}", "--save", "{tmp}/y"], "not a Hugging Face model"),
])
def test_bad_inputs_give_one_error_line(tmp_path, argv, message):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    proc = _run(_py(CONVERT, *[a.format(tmp=tmp_path) for a in argv]), check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


def test_generate_bad_checkpoint_gives_one_error_line(tmp_path):
    proc = _run(_py(GENERATE, "--load", str(tmp_path), "--prompt-ids", "1,2",
                    "--max-new-tokens", "2"), check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "not a megatron-nitp" in proc.stderr
