"""NITPGPTModel: megatron-core's GPTModel (dense or MoE) plus the NITP objective.

Forward on the last pipeline chunk returns, when NITP is on and labels are given,
(lm_loss [b, s], nitp_loss [b, s], nitp_valid [b, s]) for `nitp_loss_func`; otherwise exactly
what GPTModel returns. On a metrics step the forward step passes `geometry=` (a
`nitp.metrics.MicrobatchGeometry`); the last chunk then appends App. D's sums of this
microbatch's final hidden states: (lm_loss, nitp_loss or None, nitp_valid or None, sums). The head exists only on the last chunk; the target hook only on the chunk
that holds layer k; everything between them carries z next to h (parallel/pipeline.py).
"""

from typing import Optional

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.utils import ensure_metadata_has_dp_cp_group

from ..nitp.config import NITPConfig
from ..nitp.head import NITPHead, get_nitp_head_spec
from ..nitp.objective import nitp_token_losses, tp_rows
from ..nitp.shift import local_global_positions
from ..nitp.target import ImplicitTargetCapture
from ..parallel.pipeline import AFTER, BEFORE, OWNER, chunk_role, target_is_carried


class NITPGPTModel(GPTModel):
    def __init__(self, config, transformer_layer_spec, vocab_size, max_sequence_length,
                 nitp_config: Optional[NITPConfig] = None, nitp_head_spec=None,
                 use_transformer_engine: bool = False, **kwargs):
        super().__init__(config, transformer_layer_spec, vocab_size, max_sequence_length,
                         **kwargs)
        if self.mtp_process and self.post_process and not self.pre_process \
                and self.share_embeddings_and_output_weights:
            # megatron-core 0.16.1 allocates an output weight on a later MTP stage that nothing
            # reads (the tied weight there is its embedding copy), then refuses to checkpoint it.
            self.output_layer.weight = None
        self.nitp_config = nitp_config or NITPConfig()
        cfg = self.nitp_config
        self.nitp_head = None
        self._capture = ImplicitTargetCapture()
        self._carried = False
        self._role = None
        self._carried_target = None
        self._geometry = None  # set for the duration of one forward (a metrics step)
        self._nitp_loss_mask = None  # likewise (document boundaries)
        if not cfg.uses_target and not cfg.enabled:
            return
        if self.post_process and cfg.uses_head:
            spec = nitp_head_spec or get_nitp_head_spec(use_transformer_engine)
            self.nitp_head = NITPHead(config, spec, cfg.head_ffn_multiplier, cfg.head_recompute)
        if cfg.uses_target:
            pp_rank = self.pg_collection.pp.rank() if self.pg_collection.pp is not None else 0
            self._carried = (config.pipeline_model_parallel_size > 1
                             and target_is_carried(config, cfg.target_layer))
            self._role = chunk_role(config, cfg.target_layer, pp_rank, self.vp_stage)
            if cfg.target_layer > 0 and self._role == OWNER:
                found = self._capture.attach(self.decoder, cfg.target_layer)
                assert found, f"layer {cfg.target_layer} not built on its owner chunk"

    def sharded_state_dict(self, prefix="", sharded_offsets=(), metadata=None):
        # megatron-core 0.16.1's GPTModel reads metadata["dp_cp_group"] on an MTP stage without
        # the default its parent LanguageModule fills in (for itself only).
        return super().sharded_state_dict(prefix, sharded_offsets,
                                          ensure_metadata_has_dp_cp_group(metadata))

    # -- pipeline: split [h; z] received from the previous stage -------------------------------
    def set_input_tensor(self, input_tensor):
        if isinstance(input_tensor, list):
            input_tensor = input_tensor[0]
        if self._carried and input_tensor is not None:
            h, z = input_tensor.chunk(2, dim=0)
            self._carried_target, input_tensor = z, h
        super().set_input_tensor(input_tensor)

    def forward(self, *args, geometry=None, nitp_loss_mask=None, **kwargs):
        """nitp_loss_mask: the NITP validity's base mask when it is not the LM loss mask
        (document boundaries, nitp/documents.py)."""
        self._capture.arm()
        self._geometry, self._nitp_loss_mask = geometry, nitp_loss_mask
        try:
            return super().forward(*args, **kwargs)
        finally:
            self._capture.disarm()
            self._capture.take()
            self._carried_target = None
            self._geometry = self._nitp_loss_mask = None

    def _geometry_sums(self, hidden_states, loss_mask, seq_length):
        """App. D's sums of this microbatch's final hidden states (this rank's SP/CP rows)."""
        sp = self.config.sequence_parallel
        tp, cp = self.tp_group, self.cp_group
        positions = local_global_positions(
            seq_length, tp.rank() if sp else 0, tp.size() if sp else 1,
            cp.rank() if cp.size() > 1 else 0, cp.size(), sp)
        valid = tp_rows(loss_mask.T.bool(), tp, sp)
        return self._geometry.sums(hidden_states, valid, positions)

    def _implicit_target(self, decoder_input):
        if self._role == OWNER:
            return decoder_input if self.nitp_config.target_layer == 0 else self._capture.take()
        if self._role == AFTER:
            return self._carried_target
        return None

    def _logits(self, hidden_states, runtime_gather_output=None):
        """[b, s, V] logits of the main model. megatron-core 0.16.1's _postprocess reads `labels`
        for the MTP losses even when none are given; MTP layers only train, so skip them."""
        weight = (self.shared_embedding_or_output_weight()
                  if self.share_embeddings_and_output_weights else None)
        logits, _ = self.output_layer(hidden_states, weight=weight,
                                      runtime_gather_output=runtime_gather_output)
        return logits.transpose(0, 1).contiguous()

    def _postprocess(self, hidden_states, *args, **kwargs):
        cfg = self.nitp_config
        target = self._implicit_target(kwargs.get("decoder_input")) if cfg.uses_target else None
        if not self.post_process:
            out = super()._postprocess(hidden_states, *args, **kwargs)
            if self._carried:
                if self._role == BEFORE:
                    target = torch.zeros_like(out)
                out = torch.cat([out, target.to(out.dtype)], dim=0)
            return out
        labels = kwargs.get("labels", args[2] if len(args) > 2 else None)
        if labels is None and self.config.mtp_num_layers is not None:
            return self._logits(hidden_states, kwargs.get("runtime_gather_output"))
        # With MTP, megatron applies the MTP block to `hidden_states` in there; the NITP head
        # below reads the same main-model h_t (after the final norm), as the paper's.
        lm = super()._postprocess(hidden_states, *args, **kwargs)
        geometry = None
        if self._geometry is not None and labels is not None:
            mask = kwargs.get("loss_mask")
            if mask is None:
                mask = torch.ones_like(labels, dtype=torch.bool)
            geometry = self._geometry_sums(hidden_states, mask, labels.size(1) * self.cp_group.size())
        if not cfg.enabled or labels is None:
            return lm if geometry is None else (lm, None, None, geometry)
        assert cfg.loss_type == "generic_cosine" or target is not None, "implicit target missing"
        nitp_mask = self._nitp_loss_mask
        per_tok, valid = nitp_token_losses(
            hidden_states, target, kwargs.get("loss_mask") if nitp_mask is None else nitp_mask,
            self.nitp_head, cfg,
            seq_length=labels.size(1) * self.cp_group.size(),
            sequence_parallel=self.config.sequence_parallel,
            tp_group=self.tp_group, cp_group=self.cp_group)
        return (lm, per_tok, valid) if geometry is None else (lm, per_tok, valid, geometry)
