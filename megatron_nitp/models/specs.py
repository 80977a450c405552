"""Layer specs: dense or MoE, local (CPU-capable) or Transformer Engine, chosen by config.

MoE models with dense first layers use megatron-core's decoder *block* spec, which picks the
dense or MoE layer spec per layer from `moe_layer_freq`. The local path swaps megatron's torch
norm wrapper (which asserts sequence_parallel is off) for an SP-aware RMSNorm.
"""

import dataclasses

from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_decoder_block_spec,
    get_gpt_layer_local_spec,
)
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)

from ..parallel.norms import use_sequence_parallel_norms
from .mla import with_local_mla_core_attention
from .mtp import get_mtp_spec
from ..parallel.without_te import transformer_engine_available


def resolve_transformer_impl(requested):
    """None -> TE when importable (GPU containers), else local. 'transformer_engine' without TE
    installed is an error the caller reports against --transformer-impl."""
    if requested is None:
        return "transformer_engine" if transformer_engine_available() else "local"
    if requested == "transformer_engine" and not transformer_engine_available():
        raise ValueError("--transformer-impl transformer_engine: Transformer Engine is not "
                         "importable here; use --transformer-impl local")
    return requested


def get_layer_spec(config, transformer_impl: str, vp_stage=None, pp_rank=None):
    """A TransformerBlockSubmodules for this pipeline chunk (dense, MoE, or mixed)."""
    use_te = transformer_impl == "transformer_engine"
    if config.num_moe_experts:
        block = get_gpt_decoder_block_spec(config, use_transformer_engine=use_te,
                                           normalization=config.normalization,
                                           vp_stage=vp_stage, pp_rank=pp_rank)
    elif use_te:
        from megatron.core.models.gpt.gpt_layer_specs import (
            get_gpt_layer_with_transformer_engine_spec,
        )

        from megatron.core.extensions.transformer_engine import TENorm

        # A block spec (as megatron's TransformerBlock would build from this layer spec), so
        # that layer k can get its own spec (nitp/target.py).
        layer = get_gpt_layer_with_transformer_engine_spec(
            qk_layernorm=config.qk_layernorm,
            multi_latent_attention=config.multi_latent_attention)
        n = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
        return TransformerBlockSubmodules(layer_specs=[layer] * n, layer_norm=TENorm)
    else:
        n = get_num_layers_to_build(config, vp_stage=vp_stage, pp_rank=pp_rank)
        layer = get_gpt_layer_local_spec(normalization=config.normalization,
                                         qk_layernorm=config.qk_layernorm,
                                         multi_latent_attention=config.multi_latent_attention)
        block = TransformerBlockSubmodules(layer_specs=[layer] * n, layer_norm=None)
    if use_te:
        return block
    layers = [with_local_mla_core_attention(s) for s in block.layer_specs]
    return use_sequence_parallel_norms(
        TransformerBlockSubmodules(layer_specs=layers, layer_norm=WrappedTorchNorm))


def _local_mtp_fixups(block):
    """The local fixes above, inside each MTP layer (its transformer layer and its norms)."""
    layers = [dataclasses.replace(s, submodules=dataclasses.replace(
        s.submodules, transformer_layer=with_local_mla_core_attention(
            s.submodules.transformer_layer))) for s in block.layer_specs]
    return use_sequence_parallel_norms(dataclasses.replace(block, layer_specs=layers))


def get_mtp_block_spec(config, transformer_impl: str, vp_stage=None, pp_rank=None):
    """The MTP block of this chunk (models/mtp.py), None without MTP on it."""
    return get_mtp_spec(config, transformer_impl == "transformer_engine", vp_stage=vp_stage,
                        pp_rank=pp_rank, local_fixups=_local_mtp_fixups)
