"""Megatron-LM 0.16.1's checkpoint flags that are not a save or a load themselves.

What each means is Megatron-LM's (megatron/training/checkpointing.py, training_config.py's
CheckpointConfig); what megatron-nitp cannot do is refused in one line before any work:

- `--ckpt-format`: only `torch_dist` (megatron-core's dist checkpointing) is written and read.
- `--async-save`: refused (saves are synchronous; the tmp-dir + rename protocol of
  training/checkpointing.py would need megatron-core's async finalisation).
- `--no-save-rng` / `--no-load-rng`: honoured by training/rng_state.py (per-rank RNG state in
  the checkpoint, restored on resume unless --no-load-rng or --finetune).
- `--pretrained-checkpoint`: used when --load holds no checkpoint, as --finetune.
- `--use-checkpoint-args`: model arguments from the checkpoint's run_config.json, with
  Megatron-LM's rule (`load_args_from_checkpoint`): "forced" fields always come from the
  checkpoint, the others only when not given on the command line or in a --config file.
"""

import argparse
import os

from .checkpoint_io import CheckpointError, latest_iteration, read_run_config
from .log import info

# Megatron-LM's load_args_from_checkpoint: _set_arg(name) without force.
_CKPT_ARGS_UNLESS_GIVEN = (
    "num_layers", "hidden_size", "ffn_hidden_size", "seq_length", "num_attention_heads",
    "kv_channels", "max_position_embeddings", "padded_vocab_size", "ckpt_format",
    "moe_token_dispatcher_type",
)
# ... and with force=True (the tokenizer's two because use_tokenizer_model_from_checkpoint_args
# defaults to True there). A name this project does not (yet) have is skipped. As there,
# --vocab-size is not taken (the saved value is the tokenizer's, EOD included).
_CKPT_ARGS_FORCED = (
    "num_query_groups", "group_query_attention", "position_embedding_type",
    "add_position_embedding", "use_rotary_position_embeddings", "rotary_base", "rotary_percent",
    "rotary_interleaved", "add_bias_linear", "add_qkv_bias", "squared_relu", "swiglu",
    "untie_embeddings_and_output_weights", "apply_layernorm_1p", "normalization",
    "apply_query_key_layer_scaling", "attention_dropout", "hidden_dropout", "num_experts",
    "moe_layer_freq", "moe_ffn_hidden_size", "moe_router_topk", "moe_router_pre_softmax",
    "moe_grouped_gemm", "moe_shared_expert_intermediate_size", "moe_router_score_function",
    "moe_router_enable_expert_bias", "moe_router_topk_scaling_factor", "tokenizer_model",
    "tokenizer_type",
)


def checkpoint_flag_errors(args):
    """One message per checkpoint flag this project refuses (validation raises the first)."""
    if args.ckpt_format != "torch_dist":
        yield (f"--ckpt-format {args.ckpt_format}: megatron-nitp reads and writes torch_dist "
               "only (megatron-core's dist checkpointing); use --ckpt-format torch_dist")
    if args.async_save:
        yield ("--async-save: not supported by megatron-nitp (checkpoints are saved "
               "synchronously); drop the flag")
    if args.use_checkpoint_args and not (args.load or args.pretrained_checkpoint):
        yield "--use-checkpoint-args: needs --load or --pretrained-checkpoint"


def checkpoint_flag_notices(args):
    """Notices for checkpoint flags that are accepted without effect (none at present)."""
    return iter(())


def has_checkpoint(ckpt_dir) -> bool:
    return bool(ckpt_dir) and os.path.isdir(ckpt_dir) and latest_iteration(ckpt_dir) is not None


def resolve_pretrained_checkpoint(args, log=info):
    """Megatron-LM's load_checkpoint: with --pretrained-checkpoint and no checkpoint in --load,
    finetune from the pretrained one. A later restart of the same command (the run has saved
    into --load by then) resumes normally."""
    if not args.pretrained_checkpoint or has_checkpoint(args.load):
        return
    if not has_checkpoint(args.pretrained_checkpoint):
        raise CheckpointError(f"--pretrained-checkpoint {args.pretrained_checkpoint}: no "
                              f"checkpoint there (nor in --load {args.load})")
    log(f"notice: no checkpoint in --load {args.load}: finetuning from --pretrained-checkpoint "
        f"{args.pretrained_checkpoint}")
    args.load, args.finetune = args.pretrained_checkpoint, True


def explicit_dests(parser: argparse.ArgumentParser, argv) -> set:
    """The options argv (YAML already turned into flags) sets, by dest: parsed once more with
    every default suppressed, so only what was given appears."""
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


def apply_checkpoint_args(args, given: set, log=info):
    """--use-checkpoint-args: take the model's arguments from the checkpoint's run config."""
    source = args.load if has_checkpoint(args.load) else args.pretrained_checkpoint
    if not has_checkpoint(source):
        log("notice: --use-checkpoint-args: no checkpoint found to provide arguments; using "
            "the given ones")
        return
    try:
        saved = read_run_config(source)["args"]
    except (CheckpointError, KeyError) as e:
        raise SystemExit(f"error: --use-checkpoint-args: {e}")
    changed = []
    for names, forced in ((_CKPT_ARGS_UNLESS_GIVEN, False), (_CKPT_ARGS_FORCED, True)):
        for name in names:
            if not hasattr(args, name) or saved.get(name) is None or (name in given and not forced):
                continue
            if name == "moe_ffn_hidden_size" and saved.get("num_experts") is None:
                continue
            if getattr(args, name) != saved[name]:
                changed.append(f"{name}={saved[name]}")
            setattr(args, name, saved[name])
    if changed:
        log(f"notice: --use-checkpoint-args: from {source}: {', '.join(changed)}")
