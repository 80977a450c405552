"""Arguments -> the trained objects: megatron config, model chunks, DDP wrappers, optimizer and
scheduler, built the one way the engine, the benchmarks and the tools share."""

from dataclasses import dataclass
from typing import Any, List

from ..nitp.config import NITPConfig


@dataclass
class ModelAndOptimizer:
    config: Any  # TransformerConfig (MLATransformerConfig with MLA)
    chunks: List[Any]  # the inner models, one per virtual stage (same parameters as `model`)
    model: List[Any]  # DDP-wrapped chunks: what train_step takes
    optimizer: Any
    scheduler: Any


def build_model_and_optimizer(args, nitp_config: NITPConfig) -> ModelAndOptimizer:
    """After initialize_distributed (and, with --tp-comm-overlap, the TP communicators)."""
    from ..models.builder import build_model_chunks, transformer_config_from_args
    from .core_configs import ddp_config_from_args
    from .step import build_optimizer, wrap_ddp

    config = transformer_config_from_args(args)
    chunks = build_model_chunks(args, config, nitp_config)
    model = wrap_ddp(chunks, config, ddp_config_from_args(args))
    optimizer, scheduler = build_optimizer(args, model, config)
    return ModelAndOptimizer(config, chunks, model, optimizer, scheduler)
