"""The project's own log-likelihoods of lm-eval's requests, from the megatron checkpoint (no HF,
no lm-eval): for each sample lm-eval logged, the same tokens (lm-eval's context/continuation
split, encoded with the exported tokenizer) through megatron-nitp's NITPGPTModel.

    python own_loglikelihoods.py --job JOB.json [--job ...]
JOB.json: {"load", "iteration", "tokenizer" (HF dir), "samples" (lm-eval's, by task),
"prefix_token_id", "out"}; writes OUT {"mc": [[ll per choice] per doc], "rolling": [ll per doc]}.
One process for every job (megatron-core's import is the slow part).
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", ".."))


def encode_pair(tok, context, continuation):
    # lm-eval's HFLM._encode_pair: trailing spaces of the context move to the continuation, the
    # whole string is encoded once and split after the context's tokens.
    n = len(context) - len(context.rstrip())
    if n:
        continuation, context = context[-n:] + continuation, context[:-n]
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    return ctx, whole[len(ctx):]


@torch.no_grad()
def loglikelihood(model, context_ids, continuation_ids):
    tokens = torch.tensor([context_ids + continuation_ids])
    inputs = tokens[:, :-1]
    pos = torch.arange(inputs.size(1)).unsqueeze(0)
    logits = model(inputs, pos, None, labels=None).float()           # [1, s, V]
    logp = torch.log_softmax(logits, dim=-1)[0]
    targets = tokens[0, len(context_ids):]
    rows = torch.arange(len(context_ids) - 1, tokens.size(1) - 1)
    return logp[rows, targets].sum().item()


def score(job):
    from transformers import AutoTokenizer

    from megatron_nitp.parallel.distributed import destroy_distributed_model_parallel
    from megatron_nitp.training.checkpoint_io import load_model_single_process

    model, _, _ = load_model_single_process(job["load"], job["iteration"], drop_nitp_head=True)
    tok = AutoTokenizer.from_pretrained(job["tokenizer"])
    samples, prefix = json.load(open(job["samples"])), job["prefix_token_id"]
    out = {"mc": [], "rolling": []}
    for s in samples["tiny_mc"]:
        lls = []
        for context, continuation in s["arguments"]:
            ctx, cont = encode_pair(tok, context, continuation)
            lls.append(loglikelihood(model, ctx or [prefix], cont))
        out["mc"].append(lls)
    for s in samples["tiny_ppl"]:
        ids = tok(s["arguments"][0][0], add_special_tokens=False)["input_ids"]
        out["rolling"].append(loglikelihood(model, [prefix], ids))
    json.dump(out, open(job["out"], "w"))
    destroy_distributed_model_parallel()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--job", action="append", required=True)
    for job in p.parse_args().job:
        score(json.load(open(job)))


if __name__ == "__main__":
    main()
