"""Multi-latent attention on megatron-core's local (CPU-capable) spec.

megatron-core 0.16.1's `get_gpt_layer_local_spec(multi_latent_attention=True)` pairs
`MLASelfAttention` with the local `DotProductAttention`, but MLA builds its core attention with
`k_channels` (qk_head_dim + qk_pos_emb_head_dim) and `v_channels` (v_head_dim), which only
`TEDotProductAttention` accepts: the local spec fails to build. The local attention's math reads
head sizes from its inputs; only the output width (heads x value dim) comes from the config, so a
subclass that takes the two sizes is all that is missing.
"""

import dataclasses

from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.utils import divide


class MLADotProductAttention(DotProductAttention):
    """`DotProductAttention` with MLA's head sizes: q/k of `k_channels`, values of `v_channels`."""

    def __init__(self, *args, k_channels=None, v_channels=None, **kwargs):
        # k_channels only sizes TE's buffers; the scores' head size comes from q and k, and MLA
        # passes its own softmax scale. (The base Attention first builds a throwaway instance
        # without the sizes, which MLA then replaces.)
        super().__init__(*args, **kwargs)
        if v_channels is None:
            return
        heads = self.config.num_attention_heads
        self.hidden_size_per_attention_head = v_channels
        self.hidden_size_per_partition = divide(v_channels * heads, self.tp_group.size())


def with_local_mla_core_attention(layer_spec):
    """A layer spec whose MLA core attention is `MLADotProductAttention` (others unchanged)."""
    attn = getattr(layer_spec.submodules, "self_attention", None)
    if not isinstance(attn, ModuleSpec) or attn.submodules is None \
            or not hasattr(attn.submodules, "linear_kv_down_proj") \
            or attn.submodules.core_attention is not DotProductAttention:
        return layer_spec
    attn = dataclasses.replace(attn, submodules=dataclasses.replace(
        attn.submodules, core_attention=MLADotProductAttention))
    return dataclasses.replace(layer_spec, submodules=dataclasses.replace(
        layer_spec.submodules, self_attention=attn))
