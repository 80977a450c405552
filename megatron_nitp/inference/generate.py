"""Autoregressive generation with one loop for both backends, so that a checkpoint and its
Hugging Face export can be compared token for token (same argmax, same sampling RNG draws).

Full recompute: each step runs the whole sequence (no KV cache): simple and exact, and cheap
for the small models one checks on a CPU. Greedy picks `argmax` (first index on ties), which is
what transformers' greedy search does.
"""

from typing import Callable, List, Optional

import torch

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # ids [1, s] -> logits [1, s, V]


def megatron_logits_fn(model) -> LogitsFn:
    """NITPGPTModel (TP1/PP1, eval): labels=None makes it return logits [b, s, V]."""

    device = next(model.parameters()).device  # CUDA when megatron built the model there

    def run(ids):
        ids = ids.to(device)
        positions = torch.arange(ids.shape[1], device=device).unsqueeze(0)
        return model(ids, positions, None).float().cpu()

    return run


def hf_logits_fn(model) -> LogitsFn:
    device = next(model.parameters()).device

    def run(ids):
        return model(input_ids=ids.to(device), use_cache=False).logits.float().cpu()

    return run


def sample_next(logits: torch.Tensor, greedy: bool, temperature: float, top_k: int,
                generator: Optional[torch.Generator]) -> int:
    logits = logits.float()
    if greedy:
        return int(torch.argmax(logits))
    logits = logits / max(temperature, 1e-6)
    if top_k and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def generate_ids(logits_fn: LogitsFn, prompt_ids: List[int], max_new_tokens: int,
                 greedy: bool = True, temperature: float = 1.0, top_k: int = 0,
                 seed: Optional[int] = None, eos_id: Optional[int] = None) -> List[int]:
    """The generated ids (prompt excluded); stops after `eos_id` if given."""
    if not prompt_ids:
        raise ValueError("the prompt is empty: give at least one token")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    ids = torch.tensor([list(prompt_ids)], dtype=torch.long)
    out = []
    for _ in range(max_new_tokens):
        logits = logits_fn(ids)[0, -1]
        token = sample_next(logits, greedy, temperature, top_k, generator)
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]], dtype=torch.long)], dim=1)
        if eos_id is not None and token == eos_id:
            break
    return out
