"""From arguments to megatron-core configs and NITP model chunks (one per virtual stage)."""

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer import MLATransformerConfig, TransformerConfig

from ..nitp.config import NITPConfig
from ..parallel.precision import transformer_precision_config
from ..parallel.speed import speed_settings
from .param_count import padded_vocab_size  # noqa: F401  (re-exported for the engine)
from .gpt_nitp import NITPGPTModel
from .moe_parallel import expert_tensor_parallel_size
from .options import attention_config, mla_config, moe_routing_config
from .pipeline_layout import pipeline_config, virtual_pipeline_size  # noqa: F401  (re-exported)
from .specs import get_layer_spec, get_mtp_block_spec, resolve_transformer_impl


def transformer_config_from_args(args) -> TransformerConfig:
    moe = {}
    if args.num_experts:
        moe = dict(
            num_moe_experts=args.num_experts,
            moe_router_topk=args.moe_router_topk,
            moe_ffn_hidden_size=args.moe_ffn_hidden_size,
            moe_shared_expert_intermediate_size=args.moe_shared_expert_intermediate_size,
            moe_layer_freq=args.moe_layer_freq,
            moe_router_load_balancing_type=args.moe_router_load_balancing_type,
            moe_aux_loss_coeff=args.moe_aux_loss_coeff,
            moe_token_dispatcher_type=args.moe_token_dispatcher_type,
            moe_flex_dispatcher_backend=getattr(args, "moe_flex_dispatcher_backend", "deepep"),
            moe_router_dtype=args.moe_router_dtype,
            moe_shared_expert_overlap=args.moe_shared_expert_overlap,
            **moe_routing_config(args),
        )
    mla = mla_config(args)
    return (MLATransformerConfig if mla else TransformerConfig)(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups,
        kv_channels=args.kv_channels,
        normalization=args.normalization,
        layernorm_epsilon=args.norm_epsilon,
        gated_linear_unit=args.swiglu,
        activation_func=F.silu if args.swiglu else F.gelu,
        **attention_config(args),
        hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout,
        init_method_std=args.init_method_std,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=virtual_pipeline_size(args),
        **pipeline_config(args),
        mtp_num_layers=getattr(args, "mtp_num_layers", None),
        mtp_loss_scaling_factor=getattr(args, "mtp_loss_scaling_factor", 0.1),
        context_parallel_size=args.context_parallel_size,
        expert_model_parallel_size=args.expert_model_parallel_size,
        expert_tensor_parallel_size=expert_tensor_parallel_size(args),
        sequence_parallel=args.sequence_parallel,
        # fp16/bf16, params dtype, softmax precision, recompute, fp8 (parallel/precision.py).
        **transformer_precision_config(args),
        calculate_per_token_loss=args.calculate_per_token_loss,
        # Megatron-LM's flags, less what this machine has no kernel for (parallel/speed.py).
        **{k: v for k, v in speed_settings(args)[0].items() if not k.startswith("overlap_")},
        deallocate_pipeline_outputs=True,
        # Batched p2p posts both directions to the same peer when PP=2 with the interleaved
        # schedule; gloo (and NCCL, NVIDIA/Megatron-LM#750) can then match activations with
        # gradient buffers. The unbatched path puts the two directions on different
        # communicators; on GPU it also overlaps p2p with compute (Megatron-LM's VPP default).
        batch_p2p_comm=False,
        overlap_p2p_comm=torch.cuda.is_available() and virtual_pipeline_size(args) is not None,
        enable_cuda_graph=getattr(args, "enable_cuda_graph", False),
        **moe,
        **mla,
    )


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
            rotary_percent=getattr(args, "rotary_percent", 1.0),
            vp_stage=vp_stage,
        )
        if torch.cuda.is_available():
            # megatron builds its layers on the GPU, torch's norms (local spec) on the CPU;
            # Megatron-LM's get_model moves every chunk the same way.
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    return chunks
