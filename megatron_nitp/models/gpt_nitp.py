"""NITPGPTModel: megatron-core's GPTModel (dense or MoE) plus the NITP objective.

Forward on the last pipeline chunk returns, when NITP is on and labels are given,
(lm_loss [b, s], nitp_loss [b, s], nitp_valid [b, s]) for `nitp_loss_func`; otherwise exactly
what GPTModel returns. On a metrics step the forward step passes `geometry=` (a
`nitp.metrics.MicrobatchGeometry`); the last chunk then appends App. D's sums of this
microbatch's final hidden states: (lm_loss, nitp_loss or None, nitp_valid or None, sums). The
head exists only on the last chunk; the capturing layer (nitp/target.py) is layer k, built from
its spec on the chunk that holds it; everything between them carries z next to h, by the chunk's
TargetCarrier (parallel/pipeline.py).
"""

import contextlib
import dataclasses
from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group

from ..nitp.config import NITPConfig
from ..nitp.head import NITPHead, get_nitp_head_spec
from ..nitp.objective import nitp_token_losses, tp_rows
from ..nitp.shift import local_global_positions
from ..nitp.target import ImplicitTargetCapture, with_target_capture
from ..parallel.pipeline import AFTER, OWNER, TargetCarrier, layer_index_on_chunk


@dataclasses.dataclass(frozen=True)
class ForwardInputs:
    """What one forward hands `_postprocess` beyond megatron's own arguments.

    geometry: a `nitp.metrics.MicrobatchGeometry` on a metrics step (App. D's sums are taken);
    nitp_loss_mask: the NITP validity's base mask when it is not the LM loss mask (document
    boundaries, nitp/documents.py).

    It travels on the model for the duration of one forward because megatron-core 0.16.1's
    GPTModel.forward calls `_postprocess` with a fixed keyword list: its only pass-through,
    `extra_block_kwargs`, is also splatted into TransformerBlock.forward and the MTP block's
    forward, whose fixed signatures reject unknown keys (TypeError)."""
    geometry: Optional[object] = None
    nitp_loss_mask: Optional[torch.Tensor] = None


NO_INPUTS = ForwardInputs()


class NITPGPTModel(GPTModel):
    def __init__(self, config, transformer_layer_spec, vocab_size, max_sequence_length,
                 nitp_config: Optional[NITPConfig] = None, nitp_head_spec=None,
                 use_transformer_engine: bool = False, **kwargs):
        cfg = nitp_config or NITPConfig()
        capture = ImplicitTargetCapture()
        pg = kwargs.get("pg_collection")
        pp_rank = pg.pp.rank() if pg is not None and pg.pp is not None \
            else parallel_state.get_pipeline_model_parallel_rank()
        carrier = TargetCarrier(config, cfg, pp_rank, kwargs.get("vp_stage"))
        if cfg.uses_target and cfg.target_layer > 0 and carrier.role == OWNER:
            # Layer k is built as the capturing layer (nitp/target.py), from its spec.
            index = layer_index_on_chunk(config, cfg.target_layer, pp_rank,
                                         kwargs.get("vp_stage"))
            assert isinstance(transformer_layer_spec, TransformerBlockSubmodules), \
                "NITPGPTModel needs a block spec (models/specs.get_layer_spec)"
            assert index is not None, f"layer {cfg.target_layer} not built on its owner chunk"
            transformer_layer_spec = with_target_capture(transformer_layer_spec, index, capture)
        super().__init__(config, transformer_layer_spec, vocab_size, max_sequence_length,
                         **kwargs)
        if self.mtp_process and self.post_process and not self.pre_process \
                and self.share_embeddings_and_output_weights:
            # megatron-core 0.16.1 allocates an output weight on a later MTP stage that nothing
            # reads (the tied weight there is its embedding copy), then refuses to checkpoint it.
            self.output_layer.weight = None
        if self.mtp_process and not self.pre_process:
            # The MTP stage's embedding is a copy of the first stage's: --decoupled-lr must
            # update both alike (megatron-core 0.16.1 marks only the first; later versions both).
            self.embedding.word_embeddings.weight.is_embedding_or_output_parameter = True
        self.nitp_config = cfg
        self.nitp_head = None
        self._capture = capture
        self._carrier = carrier
        self._inputs = NO_INPUTS  # set by `_forward_scope` for one forward
        if self.post_process and cfg.enabled and cfg.uses_head:
            spec = nitp_head_spec or get_nitp_head_spec(use_transformer_engine)
            self.nitp_head = NITPHead(config, spec, cfg.head_ffn_multiplier, cfg.head_recompute)

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        # megatron-core 0.16.1's GPTModel reads metadata["dp_cp_group"] on an MTP stage without
        # the default its parent LanguageModule fills in (for itself only).
        return super().sharded_state_dict(prefix, sharded_offsets,
                                          ensure_metadata_has_dp_cp_group(metadata))

    # -- pipeline: the previous chunk sent [h; z] (parallel/pipeline.py) ----------------------
    def set_input_tensor(self, input_tensor):
        if isinstance(input_tensor, list):
            input_tensor = input_tensor[0]
        super().set_input_tensor(self._carrier.receive(input_tensor))

    def forward(self, *args, geometry=None, nitp_loss_mask=None, **kwargs):
        """GPTModel.forward; geometry and nitp_loss_mask: see `ForwardInputs`."""
        with self._forward_scope(ForwardInputs(geometry, nitp_loss_mask)):
            return super().forward(*args, **kwargs)

    @contextlib.contextmanager
    def _forward_scope(self, inputs: ForwardInputs):
        """One forward's state: its inputs, the armed capture of layer k, the carried z.
        All of it is cleared on the way out (also on error), so nothing leaks into the next
        forward nor into a recompute in backward."""
        self._capture.arm()
        self._inputs = inputs
        try:
            yield
        finally:
            self._capture.disarm()
            self._carrier.reset()
            self._inputs = NO_INPUTS

    def forward_inputs(self) -> ForwardInputs:
        """This forward's `ForwardInputs` (NO_INPUTS outside a forward)."""
        return self._inputs

    def _geometry_sums(self, geometry, hidden_states, loss_mask, seq_length):
        """App. D's sums of this microbatch's final hidden states (this rank's SP/CP rows)."""
        sp = self.config.sequence_parallel
        tp, cp = self.tp_group, self.cp_group
        positions = local_global_positions(
            seq_length, tp.rank() if sp else 0, tp.size() if sp else 1,
            cp.rank() if cp.size() > 1 else 0, cp.size(), sp)
        valid = tp_rows(loss_mask.T.bool(), tp, sp)
        return geometry.sums(hidden_states, valid, positions)

    def _implicit_target(self, decoder_input):
        role = self._carrier.role
        if role == OWNER:
            return decoder_input if self.nitp_config.target_layer == 0 else self._capture.take()
        if role == AFTER:
            return self._carrier.received()
        return None

    def _logits(self, hidden_states, runtime_gather_output=None):
        """[b, s, V] logits of the main model. megatron-core 0.16.1's _postprocess reads `labels`
        for the MTP losses even when none are given; MTP layers only train, so skip them."""
        weight = (self.shared_embedding_or_output_weight()
                  if self.share_embeddings_and_output_weights else None)
        logits, _ = self.output_layer(hidden_states, weight=weight,
                                      runtime_gather_output=runtime_gather_output)
        return logits.transpose(0, 1).contiguous()

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, rotary_pos_emb,
                     rotary_pos_cos, rotary_pos_sin, mtp_in_postprocess=None, loss_mask=None,
                     decoder_input=None, **rest):
        """GPTModel._postprocess's parameters by name (tests/unit/test_megatron_core_seams.py
        pins them); `rest`: the ones NITP does not read, passed on as they came."""
        cfg = self.nitp_config
        target = self._implicit_target(decoder_input) if cfg.uses_target else None
        megatron = dict(input_ids=input_ids, position_ids=position_ids, labels=labels,
                        rotary_pos_emb=rotary_pos_emb, rotary_pos_cos=rotary_pos_cos,
                        rotary_pos_sin=rotary_pos_sin, mtp_in_postprocess=mtp_in_postprocess,
                        loss_mask=loss_mask, decoder_input=decoder_input, **rest)
        if not self.post_process:
            return self._carrier.send(super()._postprocess(hidden_states, **megatron), target)
        if labels is None and self.config.mtp_num_layers is not None:
            return self._logits(hidden_states, rest.get("runtime_gather_output"))
        # With MTP, megatron applies the MTP block to `hidden_states` in there; the NITP head
        # below reads the same main-model h_t (after the final norm), as the paper's.
        lm = super()._postprocess(hidden_states, **megatron)
        inputs = self.forward_inputs()
        geometry = None
        if inputs.geometry is not None and labels is not None:
            mask = loss_mask if loss_mask is not None else torch.ones_like(labels, dtype=torch.bool)
            geometry = self._geometry_sums(inputs.geometry, hidden_states, mask,
                                           labels.size(1) * self.cp_group.size())
        if not cfg.enabled or labels is None:
            return lm if geometry is None else (lm, None, None, geometry)
        assert cfg.loss_type == "generic_cosine" or target is not None, "implicit target missing"
        nitp_mask = inputs.nitp_loss_mask
        per_tok, valid = nitp_token_losses(
            hidden_states, target, loss_mask if nitp_mask is None else nitp_mask,
            self.nitp_head, cfg,
            seq_length=labels.size(1) * self.cp_group.size(),
            sequence_parallel=self.config.sequence_parallel,
            tp_group=self.tp_group, cp_group=self.cp_group)
        return (lm, per_tok, valid) if geometry is None else (lm, per_tok, valid, geometry)
