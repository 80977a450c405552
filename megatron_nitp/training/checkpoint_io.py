"""Checkpoint directory layout (Megatron-LM's), shared by the engine and tools/:

    CKPT/latest_checkpointed_iteration.txt     the last *complete* checkpoint's iteration
    CKPT/iter_0000010/                         megatron dist-checkpoint of {"model0", ...}
    CKPT/iter_0000010/run_config.json          args, NITP config, iteration, tokenizer

A save is written to `iter_XXXXXXX.tmp` and renamed when complete; only then does the pointer
move. A crash mid-save leaves the previous checkpoint as the latest.
"""

import dataclasses
import json
import os

from ..errors import UserError

TRACKER = "latest_checkpointed_iteration.txt"
RUN_CONFIG = "run_config.json"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read or written as asked."""


def iteration_dir(ckpt_dir: str, iteration: int) -> str:
    return os.path.join(ckpt_dir, f"iter_{iteration:07d}")


def latest_iteration(ckpt_dir: str):
    """The iteration the tracker names, or None when the directory holds no checkpoint."""
    path = os.path.join(ckpt_dir, TRACKER)
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace").strip()
    if not (text.isascii() and text.isdigit()):
        raise CheckpointError(f"{path}: corrupted tracker file (expected an iteration number, "
                              f"found {text[:40]!r})")
    return int(text)


def read_run_config(ckpt_dir: str, iteration=None) -> dict:
    if iteration is None:
        iteration = latest_iteration(ckpt_dir)
        if iteration is None:
            raise CheckpointError(f"{ckpt_dir}: no checkpoint ({TRACKER} not found)")
    path = os.path.join(iteration_dir(ckpt_dir, iteration), RUN_CONFIG)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: missing; checkpoint iteration {iteration} is incomplete "
                              "or not written by megatron-nitp")
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:  # JSONDecodeError, or UnicodeDecodeError for undecodable bytes
        raise CheckpointError(f"{path}: corrupted ({str(e)[:200]})")


def json_safe_args(args) -> dict:
    out = {}
    for k, v in vars(args).items():
        if isinstance(v, (str, int, float, bool, type(None))):
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(
                isinstance(x, (str, int, float, bool, type(None))) for x in v):
            out[k] = list(v)
    return out


# -- reading a checkpoint into one process (tools/convert_checkpoint.py, tools/generate.py) ------
#
# Every sharded tensor key in the checkpoint is global (layers stacked by global layer number,
# experts by global expert id, TP shards by offset; with VPP "model0"/"model1" are only dict
# nesting), so a checkpoint saved at any TP/PP/EP/VPP loads at TP1/PP1 into one chunk: megatron's
# loader reassembles the shards (a TP run's SwiGLU fc1 is re-interleaved by
# `apply_swiglu_sharded_factory`).


def one_process_changes() -> dict:
    """RunConfig changes that rebuild a trained model in one CPU process at TP1/PP1/EP1, the
    local spec and the plain code paths (export, import, evaluation, generation)."""
    from ..models.pipeline_layout import NO_PIPELINE_SPLIT

    return dict(
        NO_PIPELINE_SPLIT, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
        expert_model_parallel_size=1, context_parallel_size=1,
        expert_tensor_parallel_size=None,  # = TP 1
        sequence_parallel=False, recompute_granularity=None, recompute_method=None,
        recompute_num_layers=None, recompute_activations=False,
        distribute_saved_activations=False, fp8=None, fp8_param_gather=False,
        tp_comm_overlap=False, use_distributed_optimizer=False, moe_shared_expert_overlap=False,
        enable_cuda_graph=False, moe_token_dispatcher_type="allgather", moe_grouped_gemm=False,
        # The local spec everywhere: it reads the same dist-checkpoint keys as Transformer
        # Engine's (megatron's local layer spec maps its norms onto TE's fused-norm keys), and its
        # state_dict names (input_layernorm, pre_mlp_layernorm) are what the HF mapping expects.
        transformer_impl="local")


def single_process_config(run_config: dict):
    """The run's RunConfig rebuilt for a TP1/PP1/EP1 model in one process.

    Starts from today's parser defaults so a checkpoint written before a flag existed still
    builds, and keeps the saved `padded_vocab_size`: it was padded for the *training* TP size and
    the weights have that many rows.
    """
    from ..models.builder import padded_vocab_size
    from .run_config import RunConfig

    run = RunConfig.from_saved(run_config["args"], run_config.get("nitp"))
    padded = run.padded_vocab_size
    if padded is None:
        if run.vocab_size is None:
            raise CheckpointError("run_config.json: args has neither padded_vocab_size nor "
                                  "vocab_size")
        padded = padded_vocab_size(run.vocab_size, run.make_vocab_size_divisible_by,
                                   run.tensor_model_parallel_size)
    return run.replace(
        padded_vocab_size=padded,
        saved_layout=dict(tensor=run.tensor_model_parallel_size,
                          pipeline=run.pipeline_model_parallel_size,
                          expert=run.expert_model_parallel_size,
                          virtual_layers=run.num_layers_per_virtual_pipeline_stage),
        # megatron-core keeps grouped-GEMM and per-expert (SequentialMLP) expert weights under
        # the same global keys; if a checkpoint disagrees, load_model_single_process says so.
        saved_moe_grouped_gemm=bool(run.moe_grouped_gemm),
        **one_process_changes())


# megatron-core 0.16.1 stores a layer's pre-attention/pre-MLP norm under the fused-TE names
# (`self_attention.linear_qkv.layer_norm_weight`, `mlp.linear_fc1.layer_norm_weight`) for dense
# layers of either spec and for MoE layers of the local spec (its `sharded_state_dict_keys_map`),
# but the Transformer Engine MoE layer has a separate `pre_mlp_layernorm` (gpt_layer_specs:
# `pre_mlp_layernorm=backend.layer_norm() if num_experts`), saved as `pre_mlp_layernorm.weight`.
_NORM_KEY_ALTERNATIVES = (
    (".mlp.linear_fc1.layer_norm_weight", ".pre_mlp_layernorm.weight"),
    (".self_attention.linear_qkv.layer_norm_weight", ".input_layernorm.weight"),
)


def align_norm_keys(sharded_state_dict: dict, checkpoint_keys) -> None:
    """Point norm ShardedTensors at the name the checkpoint used (TE vs local spec), in place."""
    keys = set(checkpoint_keys)
    for sh in sharded_state_dict.values():
        key = getattr(sh, "key", None)
        if not isinstance(key, str) or key in keys:
            continue
        for a, b in _NORM_KEY_ALTERNATIVES:
            for src, dst in ((a, b), (b, a)):
                if key.endswith(src) and key[: -len(src)] + dst in keys:
                    sh.key = key[: -len(src)] + dst


def load_model_single_process(ckpt_dir: str, iteration=None, drop_nitp_head: bool = False):
    """(model, args, nitp_config): a checkpoint as one TP1/PP1 NITPGPTModel in eval mode.

    Initialises torch.distributed (a world of one under plain `python`) and megatron's
    model-parallel state at TP1/PP1; `destroy_distributed_model_parallel()` before building
    another layout. `drop_nitp_head` builds the plain backbone (the head's entries are not read).
    `args.iteration` and `args.run_config` tell what was loaded.
    """
    from megatron.core import dist_checkpointing

    from ..models.builder import build_model_chunks, transformer_config_from_args
    from ..parallel.distributed import initialize_distributed

    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"{ckpt_dir}: no such directory")
    if iteration is None:
        iteration = latest_iteration(ckpt_dir)
        if iteration is None:
            raise CheckpointError(f"{ckpt_dir}: not a megatron-nitp checkpoint directory "
                                  f"({TRACKER} not found)")
    run_config = read_run_config(ckpt_dir, iteration)
    path = iteration_dir(ckpt_dir, iteration)
    if not dist_checkpointing.check_is_distributed_checkpoint(path):
        raise CheckpointError(f"{path}: not a megatron dist checkpoint (no metadata.json)")
    args = single_process_config(run_config)
    nitp_config = args.nitp_config
    if drop_nitp_head:
        nitp_config = dataclasses.replace(nitp_config, enabled=False)
    initialize_distributed(seed=args.seed)
    config = transformer_config_from_args(args)
    config.perform_initialization = False  # every weight comes from the checkpoint
    (model,) = build_model_chunks(args, config, nitp_config)
    sharded = model.sharded_state_dict()
    align_norm_keys(sharded, dist_checkpointing.load_tensors_metadata(path).keys())
    try:
        loaded = dist_checkpointing.load({"model0": sharded}, path)
    except Exception as e:  # CheckpointingException, KeyError, RuntimeError, ...
        hint = (" (saved with --moe-grouped-gemm: its experts could not be read as per-expert "
                "weights)" if args.saved_moe_grouped_gemm else "")
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: cannot load the model{hint}: {first[:300]}") from e
    model.load_state_dict(loaded["model0"], strict=True)
    model.eval()
    return (model, args.replace(nitp_config, iteration=iteration, run_config=run_config),
            nitp_config)
