"""--log-params-norm: the L2 norm of all the model's parameters, each counted once.

As Megatron-LM's calc_params_l2_norm: tensor-parallel duplicates (norms, biases replicated over
TP) and shared copies (the tied output layer on the last stage) are skipped; dense parameters
are summed over the model-parallel group (TP x PP), expert parameters over the expert
model-parallel group (ETP x EP x PP). Every data-parallel rank holds the full parameters, so no
data-parallel reduction. With a mixed-precision optimizer the fp32 main copy is read when the
parameter has an unsharded one, else the parameter itself in fp32.
"""

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate


def _is_not_shared(param):
    return not getattr(param, "shared", False)


def _fp32(param):
    main = getattr(param, "main_param", None)
    if main is not None and not getattr(param, "main_param_sharded", False):
        return main.detach().float()
    return param.detach().float()


@torch.no_grad()
def params_l2_norm(model_chunks) -> float:
    """Every rank calls it (collectives); every rank gets the norm."""
    dense, expert = None, None
    for chunk in model_chunks:
        for param in chunk.parameters():
            if not param_is_not_tensor_parallel_duplicate(param) or not _is_not_shared(param):
                continue
            sq = _fp32(param).pow(2).sum()
            if getattr(param, "allreduce", True):
                dense = sq if dense is None else dense + sq
            else:
                expert = sq if expert is None else expert + sq
    device = next(p for c in model_chunks for p in c.parameters()).device
    zero = torch.zeros((), dtype=torch.float32, device=device)
    dense = (dense if dense is not None else zero).reshape(1).clone()
    expert = (expert if expert is not None else zero).reshape(1).clone()
    dense_group = parallel_state.get_model_parallel_group()
    expert_group = parallel_state.get_expert_tensor_model_pipeline_parallel_group()
    torch.distributed.all_reduce(dense, group=dense_group)
    torch.distributed.all_reduce(expert, group=expert_group)  # zeros on a dense model
    return (dense + expert).item() ** 0.5
