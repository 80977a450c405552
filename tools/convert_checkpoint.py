"""Convert between megatron-nitp checkpoints and Hugging Face transformers directories.

    python tools/convert_checkpoint.py megatron-to-hf --load CKPT_DIR --save HF_DIR \
        [--iteration N] [--keep-nitp-head] [--dtype fp32|bf16] [--max-shard-size 5GB]
    python tools/convert_checkpoint.py hf-to-megatron --load HF_DIR --save CKPT_DIR \
        --tensor-model-parallel-size T --pipeline-model-parallel-size P \
        --expert-model-parallel-size E [--num-layers-per-virtual-pipeline-stage V] [--nitp ...]

megatron-to-hf reads a checkpoint saved at any TP/PP/EP/VPP in one process and writes
`LlamaForCausalLM` (dense) or `Qwen2MoeForCausalLM` (MoE) weights + config + generation config +
tokenizer files, loadable by `AutoModelForCausalLM.from_pretrained(dir)` with no custom code.
Llama for dense because it is exactly megatron-nitp's dense block (RMSNorm, SwiGLU, rotate-half
RoPE, GQA, no biases); Qwen2 would need zero q/k/v biases. Qwen2-MoE for MoE because it has
softmax-then-top-k routing without renormalisation (`norm_topk_prob=False`), dense layers by
index (`mlp_only_layers`) and a shared expert; its shared-expert sigmoid gate is written as zeros
(sigmoid(0) = 0.5) with the shared down_proj doubled, which is exact in floating point; without
--moe-router-pre-softmax it writes `norm_topk_prob=True`. With --qk-layernorm: `Qwen3ForCausalLM`
(dense) or `Qwen3MoeForCausalLM` (MoE without a shared expert); with --multi-latent-attention:
`DeepseekV3ForCausalLM` (convert/hf_deepseek.py); all also imported. The NITP
head is training-only: dropped unless --keep-nitp-head (then nitp_head.safetensors/.json).

hf-to-megatron writes iteration 0 as a model-only "release" checkpoint at the chosen layout
(saved by T*P*E ranks: the tool re-runs itself under torch.distributed.run); the training engine
loads it with --load and a fresh optimizer. Extra megatron-nitp flags (--nitp*, --seq-length, ...)
are stored in its run config; architecture flags come from config.json.
See docs/conversion.md.
"""

import argparse
import os
import subprocess
import sys
import warnings


PROG = "convert_checkpoint.py"


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("megatron-to-hf", help="megatron-nitp checkpoint -> transformers directory")
    e.add_argument("--load", required=True, help="checkpoint directory (the one with "
                   "latest_checkpointed_iteration.txt)")
    e.add_argument("--save", required=True, help="output directory (new or empty)")
    e.add_argument("--iteration", type=int, default=None, help="default: the latest")
    e.add_argument("--keep-nitp-head", action="store_true",
                   help="also write nitp_head.safetensors + nitp_head.json")
    e.add_argument("--keep-mtp-layers", action="store_true",
                   help="also write the MTP layers (megatron names) to mtp_layers.safetensors")
    e.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                   help="weights dtype (default: the checkpoint's)")
    e.add_argument("--max-shard-size", default="5GB", help="split safetensors above this size")
    e.add_argument("--force", action="store_true", help="write into a non-empty --save")
    e.add_argument("--no-progress", action="store_true", help="no progress bars")
    e.add_argument("--debug", action="store_true", help="tracebacks on errors")
    i = sub.add_parser("hf-to-megatron", help="transformers directory -> megatron-nitp checkpoint")
    i.add_argument("--load", required=True, help="Hugging Face model directory")
    i.add_argument("--save", required=True, help="new checkpoint directory")
    i.add_argument("--tensor-model-parallel-size", type=int, default=1)
    i.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    i.add_argument("--expert-model-parallel-size", type=int, default=1)
    i.add_argument("--debug", action="store_true", help="tracebacks on errors")
    r = sub.add_parser("_reshard", help=argparse.SUPPRESS)  # the torchrun worker of hf-to-megatron
    r.add_argument("staging")
    r.add_argument("out")
    return p


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


def _quiet_imports():
    # megatron-core warns at import about Transformer Engine/Apex being absent; say nothing.
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("megatron").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def megatron_to_hf(a) -> int:
    if not os.path.isdir(a.load):
        return _fail(f"--load {a.load}: no such directory")
    if not os.path.isfile(os.path.join(a.load, "latest_checkpointed_iteration.txt")) \
            and a.iteration is None:
        return _fail(f"--load {a.load}: not a megatron-nitp checkpoint directory "
                     "(no latest_checkpointed_iteration.txt)")
    if os.path.isdir(a.save) and os.listdir(a.save) and not a.force:
        return _fail(f"--save {a.save}: exists and is not empty (use --force to write into it)")
    _quiet_imports()
    from megatron_nitp.convert.hf_export import export_to_hf

    s = export_to_hf(a.load, a.save, a.iteration, a.keep_nitp_head, a.dtype, a.max_shard_size,
                     progress_bar=not a.no_progress, keep_mtp_layers=a.keep_mtp_layers)
    layout = s["saved_layout"]
    print(f"wrote {s['architecture']} to {s['out_dir']} from iteration {s['iteration']} "
          f"(saved at TP{layout['tensor']} PP{layout['pipeline']} EP{layout['expert']}"
          f"{' VPP' if layout['virtual_layers'] else ''})")
    print(f"  parameters: {s['parameters']:,} in {s['tensors']} tensors, dtype {s['dtype']}, "
          f"vocab {s['vocab_size']}")
    print(f"  files: {', '.join(s['files'])}")
    if s["nitp_head_parameters"]:
        print(f"  NITP head: {s['nitp_head_parameters']:,} parameters in nitp_head.safetensors")
    print(f"  dropped: {'; '.join(s['dropped']) if s['dropped'] else 'nothing'}")
    for w in s["warnings"]:
        print(f"  warning: {w}")
    return 0


def _launch_reshard(nproc: int, staging: str, out: str) -> None:
    from megatron_nitp.convert import ConversionError

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", os.path.abspath(__file__), "_reshard", staging, out]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    print(f"resharding on {nproc} processes (torch.distributed.run)...", flush=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [l for l in (proc.stderr + proc.stdout).splitlines() if l.strip()
                 and "warn" not in l.lower()]
        errors = [l for l in lines if "Error" in l or "error:" in l]
        raise ConversionError(f"the {nproc}-process reshard failed: "
                              f"{(errors or lines or ['no output'])[-1].strip()[:300]}")


def hf_to_megatron(a, extra) -> int:
    if not os.path.isdir(a.load):
        return _fail(f"--load {a.load}: no such directory")
    if not os.path.isfile(os.path.join(a.load, "config.json")):
        return _fail(f"--load {a.load}: not a Hugging Face model directory (no config.json)")
    import json

    from megatron_nitp.convert import hf_architecture

    try:
        with open(os.path.join(a.load, "config.json")) as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        return _fail(f"--load {a.load}: config.json is not valid JSON ({e})")
    hf_architecture(config)  # unknown architectures fail before the heavy imports
    _quiet_imports()
    from megatron_nitp.convert.hf_import import import_from_hf

    s = import_from_hf(a.load, a.save, a.tensor_model_parallel_size,
                       a.pipeline_model_parallel_size, a.expert_model_parallel_size, extra,
                       launch=_launch_reshard)
    lay = s["layout"]
    print(f"wrote {s['architecture']} as a model-only megatron-nitp checkpoint (iteration 0) to "
          f"{s['save_dir']}")
    print(f"  layout: TP{lay['tensor']} PP{lay['pipeline']} EP{lay['expert']}"
          f"{' VPP layers/stage ' + str(lay['virtual_layers']) if lay['virtual_layers'] else ''}; "
          f"parameters: {s['parameters']:,}; NITP: {'on' if s['nitp'] else 'off'}; "
          f"tokenizer: {s['tokenizer']}")
    for note in s["notes"]:
        print(f"  note: {note}")
    print(f"  train from it with: --load {s['save_dir']} {s['engine_flags']}")
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    a, extra = parser.parse_known_args(argv)
    if extra and a.command != "hf-to-megatron":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if a.command == "_reshard":
        _quiet_imports()
        from megatron_nitp.convert.hf_import import reshard

        reshard(a.staging, a.out)
        return 0
    from megatron_nitp.errors import UserError

    try:
        if a.command == "megatron-to-hf":
            return megatron_to_hf(a)
        return hf_to_megatron(a, extra)
    except Exception as e:
        if a.debug:
            raise
        if isinstance(e, UserError):  # ConversionError, CheckpointError: one line for the user
            return _fail(str(e))
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return _fail(f"{type(e).__name__}: {first} (--debug shows the traceback)")


if __name__ == "__main__":  # the guard matters: dist-checkpointing workers re-import this file
    sys.exit(main())
