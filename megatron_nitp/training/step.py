"""One training step on megatron-core: batch -> forward_step -> schedule -> finalize -> optimizer.

Shared by the engine loop and the equivalence tests, so what the tests prove is what trains.
"""

from functools import partial

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel as DDP
from megatron.core.distributed import DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.module import Float16Module
from megatron.core.utils import get_attr_wrapped_model, get_batch_on_this_cp_rank

from ..models.mtp import take_mtp_losses
from ..nitp.documents import within_document_mask
from ..nitp.loss import nitp_loss_func
from ..nitp.metrics import GEOMETRY_KEYS, reduce_geometry
from ..parallel.pipeline import TargetCarrier
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


def wrap_ddp(chunks, config, use_distributed_optimizer: bool, overlap_grad_reduce=False,
             overlap_param_gather=False):
    """Float16Module (bf16/fp16 runs) then megatron DDP, in Megatron-LM's get_model order.

    Float16Module casts every parameter to the model dtype in place (the torch norms of the local
    spec are built fp32 otherwise) and returns the last stage's outputs in fp32. megatron's
    mixed-precision optimizer keeps fp32 main copies only of 16-bit parameters; an fp32 norm among
    bf16 ones has no entry in its checkpoint mapping ("Param id N does not match any model
    sharded param"). `chunks` stay the inner models (same parameter objects)."""
    if config.bf16 or config.fp16:
        chunks = [Float16Module(config, chunk) for chunk in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap_grad_reduce,
        overlap_param_gather=overlap_param_gather,
        use_distributed_optimizer=use_distributed_optimizer,
    )
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
    if overlap_grad_reduce:
        config.grad_sync_func = [w.start_grad_sync for w in wrapped]
        config.grad_sync_func = config.grad_sync_func[0] if one else config.grad_sync_func
    if overlap_param_gather:
        config.param_sync_func = [w.start_param_sync for w in wrapped]
        config.param_sync_func = config.param_sync_func[0] if one else config.param_sync_func
    return wrapped


def build_optimizer(args, model_chunks, config):
    opt_config = OptimizerConfig(
        optimizer="adam",
        lr=args.lr,
        min_lr=args.min_lr,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_eps=args.adam_eps,
        clip_grad=args.clip_grad,
        bf16=args.bf16,
        params_dtype=config.params_dtype,
        use_distributed_optimizer=args.use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(opt_config, model_chunks)
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


def train_step(args, model, optimizer, scheduler, config, nitp_config, data_iterators,
               num_microbatches, iteration, geometry=None):
    """Returns (losses {name: global mean}, grad_norm, update_successful); with a geometry
    probe the losses also hold "effective_rank" and "pair_cosine" (last pipeline stage)."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    losses = forward_backward(args, model, config, nitp_config, data_iterators,
                              num_microbatches, iteration, geometry=geometry)
    update_successful, grad_norm, _ = optimizer.step()
    if update_successful:
        scheduler.step(increment=scheduler_increment(args))  # iterations, or samples
    reduced = reduce_losses(losses)
    reduced.update(reduce_step_geometry(losses, geometry, config))
    return reduced, grad_norm, update_successful
