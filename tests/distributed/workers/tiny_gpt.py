"""Tiny megatron-core GPT (dense or MoE) for equivalence tests: build it in the current layout,
load one set of global weights into any layout, and train it two ways.

- `reference_train`: the single-process oracle. A TP1/PP1/EP1 model, plain torch autograd over all
  global microbatches, `torch.optim.SGD` (or AdamW) + `clip_grad_norm_`. No megatron DDP,
  optimizer or schedule is involved, so the oracle does not share the code under test.
- `megatron_train`: megatron DDP + `get_megatron_optimizer` + `get_forward_backward_func` (1F1B,
  interleaved or no-pipelining, chosen by the layout) + `finalize_model_grads`.

Weights are keyed by *global* names (layer index = global layer number - 1, expert index = global
expert id) and sliced for TP/expert-TP with megatron's own `partition_dim`/`partition_stride`
convention (`_initialize_affine_weight_cpu`), so any layout can load the same model.
"""

import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel as DDP
from megatron.core.distributed import DistributedDataParallelConfig, finalize_model_grads
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_nitp.parallel.norms import use_sequence_parallel_norms

VOCAB = 64
SEQ = 16
MBS = 2


def tiny_config(**overrides) -> TransformerConfig:
    """A 4-layer fp32 config matching the *current* parallel_state layout."""
    vpp = ps.get_virtual_pipeline_model_parallel_world_size()
    kwargs = dict(
        num_layers=4,
        hidden_size=32,
        ffn_hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        normalization="RMSNorm",
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        use_cpu_initialization=True,
        params_dtype=torch.float32,
        pipeline_dtype=torch.float32,
        tensor_model_parallel_size=ps.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
        virtual_pipeline_model_parallel_size=vpp,
        expert_model_parallel_size=ps.get_expert_model_parallel_world_size(),
        expert_tensor_parallel_size=ps.get_expert_tensor_parallel_world_size(),
        sequence_parallel=False,
    )
    if vpp:
        # Interleaved schedule with PP=2: with batched p2p (the default) the send to the previous
        # and to the next stage go to the same rank and are indistinguishable, so activations and
        # gradients get swapped (silently wrong losses; NVIDIA/Megatron-LM#750). Megatron-LM runs
        # VPP with overlap_p2p_comm=True, batch_p2p_comm=False, which keeps the directions apart.
        kwargs.update(overlap_p2p_comm=True, batch_p2p_comm=False)
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def moe_overrides(dispatcher: str = "allgather", **extra) -> dict:
    """MoE in every other layer, 4 experts top-2, aux loss on, no token dropping."""
    kwargs = dict(
        num_moe_experts=4,
        moe_router_topk=2,
        moe_ffn_hidden_size=32,
        moe_layer_freq=[0, 1, 0, 1],
        moe_token_dispatcher_type=dispatcher,
        moe_router_load_balancing_type="aux_loss",
        moe_aux_loss_coeff=1e-2,
        moe_grouped_gemm=False,
        moe_permute_fusion=False,
    )
    kwargs.update(extra)
    return kwargs


def build_chunks(config: TransformerConfig, tied: bool = True) -> List[GPTModel]:
    """One GPTModel per virtual pipeline stage (a list of one without VPP), local spec + SP norm."""
    vpp = config.virtual_pipeline_model_parallel_size or 1
    chunks = []
    for v in range(vpp):
        vp_stage = v if config.virtual_pipeline_model_parallel_size else None
        spec = get_gpt_decoder_block_spec(
            config, use_transformer_engine=False, normalization="RMSNorm", vp_stage=vp_stage
        )
        chunks.append(
            GPTModel(
                config=config,
                transformer_layer_spec=use_sequence_parallel_norms(spec),
                vocab_size=VOCAB,
                max_sequence_length=SEQ,
                pre_process=ps.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage),
                post_process=ps.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage),
                share_embeddings_and_output_weights=tied,
                position_embedding_type="rope",
                vp_stage=vp_stage,
            )
        )
    return chunks


# ----------------------------------------------------------------------------------------------
# global names and TP slicing
# ----------------------------------------------------------------------------------------------

_LAYER = re.compile(r"^(?:module\.)*decoder\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.local_experts\.(\d+)\.")


def global_names(chunk: torch.nn.Module) -> Dict[str, torch.nn.Parameter]:
    """{global name: local parameter} for one model chunk (DDP-wrapped or not)."""
    model = chunk.module if isinstance(chunk, DDP) else chunk
    out = {}
    for name, param in model.named_parameters():
        match = _LAYER.match(name)
        if match:
            layer = model.decoder.layers[int(match.group(1))]
            name = f"decoder.layers.{layer.layer_number - 1}." + name[match.end() :]
        expert = _EXPERT.search(name)
        if expert:
            local_experts = model.config.num_moe_experts // ps.get_expert_model_parallel_world_size()
            gid = ps.get_expert_model_parallel_rank() * local_experts + int(expert.group(1))
            name = name[: expert.start()] + f".local_experts.{gid}." + name[expert.end() :]
        if name == "output_layer.weight" and model.share_embeddings_and_output_weights:
            # last stage's copy of the tied embedding (PP > 1)
            name = "embedding.word_embeddings.weight"
        out[name] = param
    return out


def shard_like(full: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    """The slice of a full (TP1) tensor that `param` holds in the current layout."""
    if not getattr(param, "tensor_model_parallel", False):
        return full
    is_expert = not getattr(param, "allreduce", True)
    if is_expert:
        rank = ps.get_expert_tensor_parallel_rank()
        world = ps.get_expert_tensor_parallel_world_size()
    else:
        rank = ps.get_tensor_model_parallel_rank()
        world = ps.get_tensor_model_parallel_world_size()
    stride = getattr(param, "partition_stride", 1)
    pieces = full.chunk(world * stride, dim=param.partition_dim)
    return torch.cat(pieces[rank::world], dim=param.partition_dim)


def load_global_weights(chunks, weights: Dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for chunk in chunks:
            for name, param in global_names(chunk).items():
                param.copy_(shard_like(weights[name], param))


def snapshot(chunks) -> Dict[str, torch.Tensor]:
    """Global-named copies of a TP1/PP1/EP1 model's parameters (the reference weights)."""
    out = {}
    for chunk in chunks:
        for name, param in global_names(chunk).items():
            out[name] = param.detach().clone()
    return out


# ----------------------------------------------------------------------------------------------
# data and losses
# ----------------------------------------------------------------------------------------------


def global_batches(num_microbatches: int, seed: int = 7) -> List[dict]:
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_microbatches):
        tokens = torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=g)
        batches.append(
            dict(
                tokens=tokens[:, :-1].contiguous(),
                labels=tokens[:, 1:].contiguous(),
                position_ids=torch.arange(SEQ).unsqueeze(0).expand(MBS, SEQ).contiguous(),
            )
        )
    return batches


def dp_slice(batches: List[dict]) -> List[dict]:
    """This DP rank's share of the global microbatches (contiguous blocks, like a sampler)."""
    dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    per_rank = len(batches) // dp
    return batches[rank * per_rank : (rank + 1) * per_rank]


def token_loss(per_token: torch.Tensor) -> torch.Tensor:
    return per_token.float().mean()


@dataclass
class Optim:
    """The optimizer both sides use. SGD by default: its update is linear in the gradient, so
    parameter comparisons are well conditioned and gradient clipping is visible in them (Adam's
    first steps are invariant to gradient scale and amplify fp32 noise where the grad is ~0)."""

    name: str = "sgd"  # or "adam" (AdamW, no weight decay)
    lr: float = 1e-2
    clip: float = 0.05  # small enough that clipping is active on the tiny model
    momentum: float = 0.9


@dataclass
class TrainResult:
    losses: List[Optional[float]]  # global mean loss per step (before its update); None off last PP stage
    grad_norms: List[float]  # total grad norm per step, before clipping
    grads_step1: Dict[str, torch.Tensor]  # global name -> first-step grad (local shard)
    params: Dict[str, torch.Tensor]  # global name -> parameter after the last step (local shard)
    layout: Dict[str, torch.nn.Parameter] = None  # global name -> live parameter (TP attributes)


def reference_train(weights, config, batches, steps: int, optim=Optim(), tied=True) -> TrainResult:
    """Single-process oracle (build under a layout with TP=PP=EP=1)."""
    (model,) = build_chunks(config, tied=tied)
    load_global_weights([model], weights)
    named = global_names(model)
    if optim.name == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, eps=1e-8, weight_decay=0.0)
    losses, norms, grads = [], [], {}
    for step in range(steps):
        opt.zero_grad()
        # MoE aux loss is injected in backward with this scale; the schedules set 1/num_mb.
        MoEAuxLossAutoScaler.set_loss_scale(torch.ones(1) / len(batches))
        total = 0.0
        for b in batches:
            out = model(b["tokens"], b["position_ids"], None, labels=b["labels"])
            loss = token_loss(out) / len(batches)
            loss.backward()
            total += loss.item()
        losses.append(total)
        if step == 0:
            grads = {n: p.grad.detach().clone() for n, p in named.items()}
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), optim.clip).item())
        opt.step()
    params = {n: p.detach().clone() for n, p in named.items()}
    return TrainResult(losses, norms, grads, params, named)


# Raw megatron-core DDP on purpose (not training/step.py's): test_cpu_compat.py proves megatron-core
# itself on CPU/gloo, independent of the package's step and builders.
def wrap_ddp(chunks, config, use_distributed_optimizer: bool = False) -> List[DDP]:
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=use_distributed_optimizer,
    )
    return [
        DDP(config, ddp_config, chunk, disable_bucketing=(i > 0)) for i, chunk in enumerate(chunks)
    ]


def megatron_optimizer(ddp_chunks, optim: Optim, use_distributed_optimizer: bool):
    opt_config = OptimizerConfig(
        optimizer=optim.name,
        lr=optim.lr,
        weight_decay=0.0,
        sgd_momentum=optim.momentum,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_eps=1e-8,
        clip_grad=optim.clip,
        use_distributed_optimizer=use_distributed_optimizer,
        params_dtype=torch.float32,
    )
    return get_megatron_optimizer(opt_config, ddp_chunks)


def _forward_step(data_iterator, model):
    b = next(data_iterator)
    out = model(b["tokens"], b["position_ids"], None, labels=b["labels"])

    def loss_func(output_tensor):
        loss = token_loss(output_tensor)
        return loss, {"loss": loss.detach().clone()}  # the schedule divides `loss` in place

    return out, loss_func


def megatron_step(ddp_chunks, optimizer, local_batches, config):
    """One step through megatron's schedule + optimizer. Returns (global mean loss on the last
    pipeline stage else None, grad norm)."""
    for chunk in ddp_chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    losses = get_forward_backward_func()(
        forward_step_func=_forward_step,
        data_iterator=[iter(local_batches) for _ in ddp_chunks],
        model=ddp_chunks,
        num_microbatches=len(local_batches),
        seq_length=SEQ,
        micro_batch_size=MBS,
        forward_only=False,
    )
    update_ok, grad_norm, _ = optimizer.step()
    assert update_ok
    if not ps.is_pipeline_last_stage(ignore_virtual=True):
        return None, grad_norm
    local = torch.stack([d["loss"] for d in losses]).mean()
    torch.distributed.all_reduce(local, group=ps.get_data_parallel_group())
    return local.item() / ps.get_data_parallel_world_size(), grad_norm


def megatron_setup(weights, config, optim=Optim(), use_distributed_optimizer=False, tied=True):
    """Model chunks (DDP-wrapped) + megatron optimizer, wired like Megatron-LM's trainer."""
    chunks = build_chunks(config, tied=tied)
    load_global_weights(chunks, weights)
    ddp_chunks = wrap_ddp(chunks, config, use_distributed_optimizer)
    no_sync = [c.no_sync for c in ddp_chunks]
    config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync
    config.finalize_model_grads_func = finalize_model_grads
    optimizer = megatron_optimizer(ddp_chunks, optim, use_distributed_optimizer)
    config.grad_scale_func = optimizer.scale_loss
    return ddp_chunks, optimizer


def megatron_train(
    weights, config, batches, steps, optim=Optim(), use_distributed_optimizer=False, tied=True
) -> TrainResult:
    ddp_chunks, optimizer = megatron_setup(weights, config, optim, use_distributed_optimizer, tied)
    grads = {}

    # Compare the finalized (DP/SP/embedding-reduced) grads: capture them right after
    # finalize_model_grads, before the optimizer clips them.
    def finalize_and_capture(*args, **kwargs):
        finalize_model_grads(*args, **kwargs)
        if not grads:
            for chunk in ddp_chunks:
                for name, p in global_names(chunk).items():
                    grads[name] = p.main_grad.detach().clone()

    config.finalize_model_grads_func = finalize_and_capture
    local = dp_slice(batches)
    steps_out = [megatron_step(ddp_chunks, optimizer, local, config) for _ in range(steps)]
    layout = {}
    for chunk in ddp_chunks:
        layout.update(global_names(chunk))
    params = {n: p.detach().clone() for n, p in layout.items()}
    return TrainResult(
        [loss for loss, _ in steps_out], [norm for _, norm in steps_out], grads, params, layout
    )


def assert_close(actual, expected, what: str, rtol=1e-4, atol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64),
        rtol=rtol, atol=atol, msg=lambda m: f"{what}\n{m}",
    )  # fmt: skip


def assert_matches_reference(result: TrainResult, ref: TrainResult, what: str, rtol=1e-4, atol=1e-6):
    """This rank's losses, grad norms, first-step grads and final parameters equal the oracle's
    (each local shard against the matching slice of the oracle's full tensor)."""
    if result.losses[0] is not None:
        assert_close(result.losses, ref.losses, f"{what}: losses {result.losses} vs {ref.losses}")
    assert_close(result.grad_norms, ref.grad_norms, f"{what}: grad norms", rtol, atol)
    for kind, mine, theirs in (("grad", result.grads_step1, ref.grads_step1),
                               ("param", result.params, ref.params)):  # fmt: skip
        for name, local in mine.items():
            expected = shard_like(theirs[name], result.layout[name])
            assert_close(local, expected, f"{what}: {kind} of {name} differs", rtol, atol)


def assert_same_training(result: TrainResult, other: TrainResult, what: str, rtol=1e-4, atol=1e-6):
    """Two runs in the same layout agree (losses, grad norms, local grads and parameters)."""
    if result.losses[0] is not None:
        assert_close(result.losses, other.losses, f"{what}: losses {result.losses} vs {other.losses}")
    assert_close(result.grad_norms, other.grad_norms, f"{what}: grad norms", rtol, atol)
    for kind, mine, theirs in (("grad", result.grads_step1, other.grads_step1),
                               ("param", result.params, other.params)):  # fmt: skip
        for name, local in mine.items():
            assert_close(local, theirs[name], f"{what}: {kind} of {name} differs", rtol, atol)
