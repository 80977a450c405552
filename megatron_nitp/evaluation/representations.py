"""Frozen last-layer hidden states of a trained model, and what the paper measures on them.

Shared by `tools/eval_representations.py` and `examples/demo_compare/run.py`:

- `MegatronEncoder` / `HFEncoder`: token ids -> final-norm hidden states `[s, b, d]` (the tensor
  that feeds the output layer; App. E's "last-layer hidden states").
- `validation_batches`: a fixed, deterministic list of held-out micro-batches built exactly as
  the engine builds its validation split, so two models are measured on the same tokens.
- `representation_geometry`: App. D's effective rank and pair cosine on those batches, with the
  library metrics (`megatron_nitp.nitp.metrics`, the code the training loop logs with): each
  held-out batch taken as one mini-batch (pairs across its sequences), then averaged.
- `mean_pooled_embeddings`: App. E's sentence representation: mean over valid tokens, L2-normed.
"""

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from ..nitp.metrics import effective_rank, pair_cosine


class MegatronEncoder:
    """A megatron-nitp checkpoint loaded into one process (TP1/PP1), NITP head dropped."""

    def __init__(self, ckpt_dir: str, iteration: Optional[int] = None):
        from ..training.checkpoint_io import load_model_single_process

        self.model, self.args, _ = load_model_single_process(ckpt_dir, iteration,
                                                             drop_nitp_head=True)
        self.name = f"{ckpt_dir}@{self.args.iteration}"
        self.max_length = self.args.max_position_embeddings
        tok = self.args.run_config.get("tokenizer") or {}
        self.tokenizer_type = tok.get("type") or self.args.tokenizer_type
        self.tokenizer_model = tok.get("model") or self.args.tokenizer_model
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from ..data.tokenizers import build_tokenizer, tokenizer_options

            self._tokenizer = build_tokenizer(self.tokenizer_type, self.tokenizer_model,
                                              self.args.vocab_size,
                                              **tokenizer_options(self.args))
        return self._tokenizer

    def tokenize(self, text: str) -> List[int]:
        return list(self.tokenizer.tokenize(text))

    @torch.no_grad()
    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [b, s] -> final-norm hidden states [s, b, d] (float32).

        The decoder (TransformerBlock) applies the final norm on the last stage: its output is
        read by a forward hook; with `labels=None` the forward computes logits, which we drop.
        """
        model = self.model
        tokens = tokens.to(next(model.parameters()).device)
        position_ids = torch.arange(tokens.size(1), device=tokens.device).unsqueeze(0)
        position_ids = position_ids.expand_as(tokens)
        seen = []
        handle = model.decoder.register_forward_hook(lambda _m, _i, out: seen.append(out))
        try:
            model(tokens, position_ids, None, labels=None)
        finally:
            handle.remove()
        return seen[0].detach().float().cpu()


class HFEncoder:
    """A Hugging Face causal LM directory (e.g. one exported by tools/convert_checkpoint.py)."""

    def __init__(self, hf_dir: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
        self.model.eval()
        self.hf_tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        self.name = hf_dir
        self.max_length = getattr(self.model.config, "max_position_embeddings", 512)

    def tokenize(self, text: str) -> List[int]:
        return self.hf_tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(next(self.model.parameters()).device)
        out = self.model(input_ids=tokens, output_hidden_states=True)
        # hidden_states[-1] is the last layer after the final norm (Llama/Qwen2 convention).
        return out.hidden_states[-1].transpose(0, 1).float().cpu()


def validation_batches(run_args, num_batches: int, micro_batch_size: int,
                       tokenizer=None) -> List[Dict[str, torch.Tensor]]:
    """The first `num_batches` micro-batches of the held-out split, as the engine builds it
    (same data path, split, sequence length and seed), so every model sees the same tokens."""
    from ..data.datasets import build_datasets
    from ..data.iterators import build_data_iterator
    from ..data.tokenizers import build_tokenizer, tokenizer_options

    a = run_args
    if tokenizer is None:
        tokenizer = build_tokenizer(a.tokenizer_type, a.tokenizer_model, a.vocab_size,
                                    **tokenizer_options(a))
    n = num_batches * micro_batch_size
    _, valid, _ = build_datasets(a.data_path, a.split, bool(a.mock_data), a.seq_length,
                                 tokenizer, a.seed, (1, n, 1),
                                 a.data_cache_path)
    if valid is None:
        raise ValueError(f"--split {a.split}: the run has no validation split")
    it = build_data_iterator(valid, micro_batch_size, 0, 1, 0)
    return [next(it) for _ in range(num_batches)]


def representation_geometry(encoder, batches: Sequence[Dict[str, torch.Tensor]]) -> dict:
    """Effective rank and pair cosine of the final hidden states over valid tokens, per batch.

    Returns the mean over batches (`effective_rank`, `pair_cosine`), their per-batch values and
    the token count, so a reader can see the spread.
    """
    ranks, cosines, tokens = [], [], 0
    for batch in batches:
        h = encoder.hidden_states(batch["tokens"])          # [s, b, d]
        valid = batch["loss_mask"].T.bool()                  # [s, b]
        ranks.append(effective_rank(h, valid))
        cosines.append(pair_cosine(h, valid))
        tokens += int(valid.sum())
    return {
        "effective_rank": sum(ranks) / len(ranks),
        "pair_cosine": sum(cosines) / len(cosines),
        "effective_rank_per_batch": ranks,
        "pair_cosine_per_batch": cosines,
        "num_batches": len(batches),
        "num_tokens": tokens,
    }


def mean_pooled_embeddings(encoder, token_lists: Sequence[Sequence[int]],
                           batch_size: int = 16) -> torch.Tensor:
    """[n, d] L2-normalised means of the final hidden states over each sequence's tokens.

    Sequences are right-padded; attention is causal, so padding never changes a real token's
    state, and padded positions are excluded from the mean.
    """
    out = []
    for start in range(0, len(token_lists), batch_size):
        chunk = [list(t)[: encoder.max_length] for t in token_lists[start:start + batch_size]]
        length = max(len(t) for t in chunk)
        tokens = torch.zeros(len(chunk), length, dtype=torch.long)
        mask = torch.zeros(len(chunk), length)
        for i, t in enumerate(chunk):
            tokens[i, :len(t)] = torch.tensor(t, dtype=torch.long)
            mask[i, :len(t)] = 1.0
        h = encoder.hidden_states(tokens).transpose(0, 1)   # [b, s, d]
        pooled = (h * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        out.append(F.normalize(pooled, dim=-1))
    return torch.cat(out)
