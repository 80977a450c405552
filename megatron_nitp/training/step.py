"""One training step on megatron-core: batch -> forward_step -> schedule -> finalize -> optimizer.

`train_step` is the one step of the engine loop, the benchmarks and the equivalence tests, so
what the tests prove is what trains.
"""

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Dict, Optional

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel as DDP
from megatron.core.distributed import finalize_model_grads
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module
from megatron.core.utils import get_attr_wrapped_model, get_batch_on_this_cp_rank

from ..models.mtp import mtp_loss_names, take_mtp_losses
from ..nitp.documents import within_document_mask
from ..nitp.loss import nitp_loss_func
from ..nitp.metrics import GEOMETRY_KEYS, reduce_geometry
from ..parallel.pipeline import TargetCarrier
from ..parallel.precision import uses_grad_scaler
from .core_configs import optimizer_config_from_args
from .decoupled_lr import optimizer_config_overrides
from .sample_schedule import scheduler_increment
from .schedule_resume import scheduler_kwargs

BATCH_KEYS = ("tokens", "labels", "loss_mask", "position_ids", "attention_mask")


def get_batch(data_iterator, device):
    """Next microbatch on this CP rank (megatron's load-balanced chunk order)."""
    batch = next(data_iterator)
    batch = {k: batch[k].to(device) for k in BATCH_KEYS if k in batch}
    if parallel_state.get_context_parallel_world_size() > 1:
        batch = get_batch_on_this_cp_rank(batch)
    return batch


def make_forward_step(nitp_weight: float, calculate_per_token_loss: bool, device="cpu",
                      geometry=None, document_eod=None):
    """megatron forward_step_func: (data_iterator, model) -> (output, loss_func).
    geometry: a `nitp.metrics.GeometryProbe` on a metrics step (the last chunk measures each
    microbatch; the schedule runs a chunk's microbatches in order). document_eod: the EOD id
    when attention is reset at document ends (NITP targets then stay inside documents)."""

    def forward_step(data_iterator, model):
        batch = get_batch(data_iterator, device) if data_iterator is not None else {}
        kwargs = {}
        if geometry is not None and get_attr_wrapped_model(model, "post_process"):
            kwargs["geometry"] = geometry.next_microbatch()
        if document_eod is not None and "loss_mask" in batch:
            kwargs["nitp_loss_mask"] = within_document_mask(batch["loss_mask"], batch["tokens"],
                                                            document_eod)
        # attention_mask: only a --reset-attention-mask batch has one (else causal, built by
        # the attention itself).
        output = model(batch.get("tokens"), batch.get("position_ids"),
                       batch.get("attention_mask"), labels=batch.get("labels"),
                       loss_mask=batch.get("loss_mask"), **kwargs)
        return output, partial(nitp_loss_func, batch.get("loss_mask"), nitp_weight,
                               calculate_per_token_loss)

    return forward_step


def wrap_ddp(chunks, config, ddp_config):
    """Float16Module (bf16/fp16 runs) then megatron DDP, in Megatron-LM's get_model order.
    ddp_config: training/core_configs.ddp_config_from_args.

    Float16Module casts every parameter to the model dtype in place (the torch norms of the local
    spec are built fp32 otherwise) and returns the last stage's outputs in fp32. megatron's
    mixed-precision optimizer keeps fp32 main copies only of 16-bit parameters; an fp32 norm among
    bf16 ones has no entry in its checkpoint mapping ("Param id N does not match any model
    sharded param"). `chunks` stay the inner models (same parameter objects)."""
    if config.bf16 or config.fp16:
        chunks = [Float16Module(config, chunk) for chunk in chunks]
    wrapped = [DDP(config, ddp_config, chunk, disable_bucketing=(i > 0))
               for i, chunk in enumerate(chunks)]
    for w in wrapped:
        w.broadcast_params()
    config.no_sync_func = [w.no_sync for w in wrapped]
    if len(wrapped) == 1:
        config.no_sync_func = config.no_sync_func[0]
    config.finalize_model_grads_func = finalize_model_grads
    # As Megatron-LM (align_grad_reduce / align_param_gather, its defaults): the schedule starts
    # each chunk's reduction or gather itself, so all PP stages launch them in the same order.
    one = len(wrapped) == 1
    if ddp_config.overlap_grad_reduce:
        config.grad_sync_func = [w.start_grad_sync for w in wrapped]
        config.grad_sync_func = config.grad_sync_func[0] if one else config.grad_sync_func
    if ddp_config.overlap_param_gather:
        config.param_sync_func = [w.start_param_sync for w in wrapped]
        config.param_sync_func = config.param_sync_func[0] if one else config.param_sync_func
    return wrapped


def build_optimizer(args, model_chunks, config):
    # By field name as Megatron-LM, then the precision derivation (training/core_configs.py).
    opt_config = optimizer_config_from_args(args)
    optimizer = get_megatron_optimizer(opt_config, model_chunks,
                                       config_overrides=optimizer_config_overrides(opt_config))
    if uses_grad_scaler(args):
        # As Megatron-LM's train(): the schedule multiplies each microbatch loss by the scale
        # before backward; the optimizer unscales (and skips the step on an overflow).
        config.grad_scale_func = optimizer.scale_loss
    scheduler = OptimizerParamScheduler(optimizer, **scheduler_kwargs(args))
    return optimizer, scheduler


def reduce_losses(losses_per_microbatch):
    """{name: [sum, count]} over microbatches and DP (x CP) ranks -> {name: global mean}."""
    if not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return {}
    totals = {}
    for record in losses_per_microbatch:
        for name, value in record.items():
            if name not in GEOMETRY_KEYS:  # reduced by nitp.metrics.reduce_geometry
                totals[name] = totals.get(name, 0) + value.detach().float()
    out = {}
    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    for name in sorted(totals):
        t = totals[name].clone()
        torch.distributed.all_reduce(t, group=group)
        out[name] = (t[0] / t[1].clamp(min=1)).item()
    out.update(take_mtp_losses(len(losses_per_microbatch)))  # "mtp_1 loss", ... (models/mtp.py)
    return out


def geometry_groups(config):
    """The groups whose ranks hold different tokens: DP x CP, and TP under sequence parallel."""
    groups = [parallel_state.get_data_parallel_group(with_context_parallel=True)]
    if config.sequence_parallel:
        groups.append(parallel_state.get_tensor_model_parallel_group())
    return groups


def reduce_step_geometry(losses_per_microbatch, geometry, config):
    """App. D's effective rank and pair cosine of the step's mini-batch on the last pipeline
    stage (its microbatch reports hold the sums); {} elsewhere or without a probe."""
    if geometry is None or not parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        return {}
    return reduce_geometry(losses_per_microbatch, geometry.plan, geometry_groups(config))


def forward_backward(args, model, config, nitp_config, data_iterators, num_microbatches,
                     iteration, forward_only=False, geometry=None, document_eod=None):
    weight = nitp_config.weight_at(iteration) if nitp_config.enabled else 0.0
    return get_forward_backward_func()(
        forward_step_func=make_forward_step(
            weight, config.calculate_per_token_loss,
            device=torch.cuda.current_device() if torch.cuda.is_available() else "cpu",
            geometry=geometry, document_eod=document_eod),
        data_iterator=data_iterators,
        model=model,
        num_microbatches=num_microbatches,
        seq_length=TargetCarrier.schedule_seq_length(config, nitp_config, args.seq_length),
        micro_batch_size=args.micro_batch_size,
        forward_only=forward_only,
    )


def _device():
    """Where collectives' tensors live: NCCL needs CUDA tensors, gloo CPU ones."""
    return (torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available()
            else torch.device("cpu"))


def pipeline_broadcast(values: dict, keys):
    """Losses live on the last pipeline stage; bring them to every rank (rank 0 logs)."""
    t = torch.tensor([values.get(k, 0.0) for k in keys] + [1.0 if values else 0.0],
                     dtype=torch.float64, device=_device())
    torch.distributed.all_reduce(t, group=parallel_state.get_pipeline_model_parallel_group())
    return {k: t[i].item() for i, k in enumerate(keys)} if t[-1] > 0 else {}


def grads_finite(model):
    """Every rank's gradient buffers finite; per-bucket checks stay on the device, one host
    sync for the whole step."""
    flags = [torch.isfinite(buf.grad_data).all() for chunk in model
             for buf in list(chunk.buffers) + list(chunk.expert_parallel_buffers)]
    bad = ((~torch.stack(flags).all()).float().reshape(1) if flags
           else torch.zeros(1, device=_device()))
    torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    return bad.item() == 0


LOSS_KEYS = ("lm loss", "nitp loss")


def loss_keys(args):
    """LOSS_KEYS and, with --mtp-num-layers, Megatron-LM's "mtp_1 loss", ... (models/mtp.py)."""
    return LOSS_KEYS + tuple(mtp_loss_names(args.mtp_num_layers))
METRIC_KEYS = ("effective_rank", "pair_cosine")


@dataclass
class StepResult:
    losses: Dict[str, float]  # LOSS_KEYS: global means, on every rank
    grad_norm: float  # nan when the step was skipped
    ok: bool  # the update was applied: finite losses and gradients, optimizer succeeded
    metrics: Dict[str, float] = field(default_factory=dict)  # METRIC_KEYS on a metrics step
    num_zeros_in_grad: Optional[int] = None  # --log-num-zeros-in-grad
    overflow: bool = False  # skipped by the loss scaler (fp16 / --loss-scale): not a bad step


def _poison(losses, model):
    """--debug-inject-nan-iters (training/debug.py): this step's losses and one gradient NaN,
    as a diverging step would leave them."""
    for p in model[0].parameters():
        p.main_grad.fill_(float("nan"))
        break
    return {k: float("nan") for k in losses}


def train_step(args, model, optimizer, scheduler, config, nitp_config, data_iterators,
               num_microbatches, iteration, geometry=None, document_eod=None,
               poison=False) -> StepResult:
    """The training step of the engine, the benchmarks and the equivalence tests: zero grads,
    forward/backward over the microbatches, then the update unless a loss or a gradient is
    non-finite on any rank (the step is skipped: parameters, optimizer and scheduler stay).
    geometry: a GeometryProbe on a metrics step; document_eod: see make_forward_step; poison:
    a debug fault (training/debug.py)."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    raw = forward_backward(args, model, config, nitp_config, data_iterators, num_microbatches,
                           iteration, geometry=geometry, document_eod=document_eod)
    losses = reduce_losses(raw)
    metrics = reduce_step_geometry(raw, geometry, config)
    if poison:
        losses = _poison(losses, model)
    losses = pipeline_broadcast(losses, loss_keys(args))
    losses_finite = all(math.isfinite(v) for v in losses.values())
    overflow = False
    # This step's samples, as Megatron-LM counts them (--rampup-batch-size varies them).
    batch = (num_microbatches * args.micro_batch_size
             * parallel_state.get_data_parallel_world_size())
    if uses_grad_scaler(args):
        # fp16 / --loss-scale: overflowing gradients are the grad scaler's business (as in
        # Megatron-LM): optimizer.step unscales, finds the inf, skips the update and backs the
        # scale off. Only a non-finite loss counts as a bad step.
        update_successful, grad_norm, num_zeros = optimizer.step()
        if update_successful:
            scheduler.step(increment=scheduler_increment(args, batch))
        ok = bool(update_successful) and losses_finite
        overflow = not update_successful and losses_finite
    else:
        ok = grads_finite(model) and losses_finite
        grad_norm, num_zeros = float("nan"), None
        if ok:
            update_successful, grad_norm, num_zeros = optimizer.step()
            ok = bool(update_successful) and grad_norm is not None and math.isfinite(grad_norm)
            if ok:
                scheduler.step(increment=scheduler_increment(args, batch))  # iterations/samples
    if geometry is not None:
        metrics = pipeline_broadcast(metrics, METRIC_KEYS)
    return StepResult(losses, grad_norm if grad_norm is not None else float("nan"), ok, metrics,
                      num_zeros, overflow)


def eval_losses(args, model, config, nitp_config, data_iterators, num_microbatches, iteration,
                eval_iters, document_eod=None):
    """Forward only over `eval_iters` global batches: {"lm loss", "nitp loss"} on every rank."""
    for c in model:
        c.eval()
    totals = []
    with torch.no_grad():
        for _ in range(eval_iters):
            totals += forward_backward(args, model, config, nitp_config, data_iterators,
                                       num_microbatches, iteration, forward_only=True,
                                       document_eod=document_eod)
    for c in model:
        c.train()
    return pipeline_broadcast(reduce_losses(totals), LOSS_KEYS)
