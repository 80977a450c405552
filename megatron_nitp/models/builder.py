"""From arguments to megatron-core configs and NITP model chunks (one per virtual stage)."""

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer import MLATransformerConfig, TransformerConfig

from ..nitp.config import NITPConfig
from ..parallel.precision import transformer_precision_config
from ..parallel.speed import speed_settings
from ..training.run_config import fields_by_name
from .param_count import padded_vocab_size  # noqa: F401  (re-exported for the engine)
from .gpt_nitp import NITPGPTModel
from .moe_parallel import expert_tensor_parallel_size
from .options import attention_config, mla_config, moe_routing_config
from .pipeline_layout import pipeline_config, virtual_pipeline_size  # noqa: F401  (re-exported)
from .specs import get_layer_spec, get_mtp_block_spec, resolve_transformer_impl


def transformer_config_from_args(args) -> TransformerConfig:
    mla = mla_config(args)
    config_class = MLATransformerConfig if mla else TransformerConfig
    kwargs = fields_by_name(config_class, args)
    # What the flags mean in megatron-core's terms, where name or value differ.
    kwargs.update(
        layernorm_epsilon=args.norm_epsilon,
        gated_linear_unit=args.swiglu,
        activation_func=F.silu if args.swiglu else F.gelu,
        **attention_config(args),
        virtual_pipeline_model_parallel_size=virtual_pipeline_size(args),
        **pipeline_config(args),
        expert_tensor_parallel_size=expert_tensor_parallel_size(args),
        transformer_impl=resolve_transformer_impl(args.transformer_impl),
        # fp16/bf16, params dtype, softmax precision, recompute, fp8 (parallel/precision.py).
        **transformer_precision_config(args),
        # Megatron-LM's flags, less what this machine has no kernel for (parallel/speed.py).
        **{k: v for k, v in speed_settings(args)[0].items() if not k.startswith("overlap_")},
        deallocate_pipeline_outputs=True,
        # Batched p2p posts both directions to the same peer when PP=2 with the interleaved
        # schedule; gloo (and NCCL, NVIDIA/Megatron-LM#750) can then match activations with
        # gradient buffers. The unbatched path puts the two directions on different
        # communicators; on GPU it also overlaps p2p with compute (Megatron-LM's VPP default).
        batch_p2p_comm=False,
        overlap_p2p_comm=torch.cuda.is_available() and virtual_pipeline_size(args) is not None,
        **mla,
    )
    if args.num_experts:
        kwargs.update(num_moe_experts=args.num_experts, **moe_routing_config(args))
    return config_class(**kwargs)


def build_model_chunks(args, config: TransformerConfig, nitp_config: NITPConfig):
    """One NITPGPTModel per virtual pipeline stage of this rank (unwrapped)."""
    impl = resolve_transformer_impl(args.transformer_impl)
    vp = config.virtual_pipeline_model_parallel_size
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    chunks = []
    for vp_stage in (range(vp) if vp else [None]):
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        model = NITPGPTModel(
            config,
            get_layer_spec(config, impl, vp_stage=vp_stage, pp_rank=pp_rank),
            mtp_block_spec=get_mtp_block_spec(config, impl, vp_stage=vp_stage, pp_rank=pp_rank),
            vocab_size=args.padded_vocab_size,
            max_sequence_length=args.max_position_embeddings,
            nitp_config=nitp_config,
            use_transformer_engine=impl == "transformer_engine",
            pre_process=pre,
            post_process=post,
            share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
            position_embedding_type=args.position_embedding_type,
            rotary_base=args.rotary_base,
            rotary_percent=args.rotary_percent,
            vp_stage=vp_stage,
        )
        if torch.cuda.is_available():
            # megatron builds its layers on the GPU, torch's norms (local spec) on the CPU;
            # Megatron-LM's get_model moves every chunk the same way.
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    return chunks
