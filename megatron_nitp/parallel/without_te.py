"""megatron-core 0.16.1 without Transformer Engine (or apex), on a GPU as on a CPU.

A GPU machine without Transformer Engine runs megatron's local specs and torch's Adam, and meets
the same gaps the CPU does; `apply_without_transformer_engine()` closes them whenever Transformer
Engine does not import, whatever the device (the CUDA-less patches are in cpu_compat.py). Each
patch names the megatron-core function it covers.
"""

import torch

_APPLIED = False


def transformer_engine_available() -> bool:
    """Transformer Engine and megatron's wrapper of it import (a broken install counts as absent)."""
    try:
        import transformer_engine  # noqa: F401
        from megatron.core.extensions import transformer_engine as _te  # noqa: F401
    except Exception:
        return False
    return True


def apply_without_transformer_engine() -> bool:
    """Apply once when Transformer Engine is absent; return True if the patches are active."""
    global _APPLIED
    if _APPLIED:
        return True
    if transformer_engine_available():
        return False
    _bind_te_general_gemm()
    _unset_mla_have_te()
    _patch_distributed_optimizer_state()
    _checkpoint_without_output_without_fp8()
    _APPLIED = True
    return True


def _bind_te_general_gemm() -> None:
    """`moe_utils.router_gating_linear` (RouterGatingLinearFunction) tests `te_general_gemm is not
    None`, but moe_utils binds the name only when Transformer Engine imports: every MoE router
    forward raises NameError. Bind it to None (the torch matmul path)."""
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def _unset_mla_have_te() -> None:
    """`MLASelfAttention.__init__` tests `HAVE_TE and isinstance(self.linear_proj, TELinear)`;
    multi_latent_attention sets HAVE_TE from imports that succeed without Transformer Engine
    (its extension module stubs the names), so the isinstance raises TypeError and MLA cannot
    be built. HAVE_TE there guards only that TE-only fp8/fp4 branch."""
    from megatron.core.transformer import multi_latent_attention

    multi_latent_attention.HAVE_TE = False


def _checkpoint_without_output_without_fp8() -> None:
    """`CheckpointWithoutOutput.__init__(fp8=False)` sets `self.fp8 = fp8 is not None` (True for
    the default), so its forward asks Transformer Engine's FP8GlobalStateManager, unbound without
    TE: selective recompute of "layernorm" or "moe_act" (--recompute-modules) raises NameError.
    Without TE no fp8 is possible: keep the flag off."""
    from megatron.core.tensor_parallel import random as tp_random

    original_init = tp_random.CheckpointWithoutOutput.__init__

    def __init__(self, fp8=False):
        original_init(self, fp8)
        self.fp8 = False

    tp_random.CheckpointWithoutOutput.__init__ = __init__


# ---------------------------------------------------------------------------------------------
# Distributed optimizer state with torch's Adam (megatron's fallback without TE / apex FusedAdam)
# ---------------------------------------------------------------------------------------------


def _fill_empty_adam_state(inner_optimizer: torch.optim.Optimizer) -> None:
    """What one Adam step would create, without stepping: a private zero `step` and zero moments."""
    for group in inner_optimizer.param_groups:
        for param in group["params"]:
            state = inner_optimizer.state[param]
            if len(state) == 0:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)


def _privatise_steps(inner_optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter its own `step` tensor (see `_patch_distributed_optimizer_state`)."""
    seen = set()
    for state in inner_optimizer.state.values():
        step = state.get("step")
        if torch.is_tensor(step):
            if id(step) in seen:
                state["step"] = step.detach().clone()
            seen.add(id(state["step"]))


def _patch_distributed_optimizer_state() -> None:
    """`DistributedOptimizer` checkpoint load with torch.optim.Adam/AdamW (the CPU optimizer).

    Without apex/TE, megatron reads the iteration from the per-parameter Adam `step` state:
    - `DistributedOptimizer.state_dict` asserts exactly one step value among the inner state, so
      `sharded_state_dict(is_loading=True)` on a fresh optimizer (empty state) fails. Pre-fill the
      state as one Adam step would (zeros; the load overwrites them) before it runs.
    - `DistributedOptimizer.load_state_dict` puts ONE `step` tensor object into every parameter's
      state. torch Adam increments `step` in place once per parameter, so after resume the shared
      counter races ahead (+N per optimizer step for N params) and the bias correction is silently
      wrong: the next-step loss after resume differs from an uninterrupted run. Give each parameter
      a private copy after loading.
    - `DistributedOptimizer._set_main_param_and_optimizer_states` (used by
      `load_parameter_state_from_fully_reshardable` and the other param-state loaders) copies every
      key of the inner state from the loaded tensors, but the loaders deliberately leave `step` out
      (it comes from the param groups): KeyError 'step'. Keep the current value for keys the
      checkpoint does not carry.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    original_sharded_state_dict = DistributedOptimizer.sharded_state_dict
    original_load_state_dict = DistributedOptimizer.load_state_dict
    original_set_states = DistributedOptimizer._set_main_param_and_optimizer_states

    def sharded_state_dict(self, model_sharded_state_dict={}, is_loading=False, *args, **kwargs):
        if is_loading and isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW)):
            _fill_empty_adam_state(self.optimizer)
        return original_sharded_state_dict(
            self, model_sharded_state_dict, is_loading, *args, **kwargs
        )

    def load_state_dict(self, state_dict):
        result = original_load_state_dict(self, state_dict)
        if isinstance(self.optimizer, torch.optim.Optimizer):
            _privatise_steps(self.optimizer)
        return result

    def _set_main_param_and_optimizer_states(self, model_param, tensors):
        current = self._get_main_param_and_optimizer_states(model_param)
        kept = {key: value for key, value in current.items() if key not in tensors}
        return original_set_states(self, model_param, {**kept, **tensors})

    DistributedOptimizer.sharded_state_dict = sharded_state_dict
    DistributedOptimizer.load_state_dict = load_state_dict
    DistributedOptimizer._set_main_param_and_optimizer_states = _set_main_param_and_optimizer_states
