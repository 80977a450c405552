"""The project's own log-likelihoods of lm-eval's requests, from the megatron checkpoint (no HF,
no lm-eval): for each sample lm-eval logged, the same tokens (lm-eval's context/continuation
split, encoded with the exported tokenizer) through megatron-nitp's NITPGPTModel.

    python own_loglikelihoods.py --load CKPT --iteration N --tokenizer HF_DIR --samples S.json \
        --prefix-token-id ID --out OUT.json
Writes {"mc": [[ll per choice] per doc], "rolling": [ll per doc]}.
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


def main():
    p = argparse.ArgumentParser()
    for k in ("--load", "--tokenizer", "--samples", "--out"):
        p.add_argument(k, required=True)
    p.add_argument("--iteration", type=int, required=True)
    p.add_argument("--prefix-token-id", type=int, required=True)
    a = p.parse_args()
    from transformers import AutoTokenizer

    from megatron_nitp.training.checkpoint_io import load_model_single_process

    model, _, _ = load_model_single_process(a.load, a.iteration, drop_nitp_head=True)
    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    samples = json.load(open(a.samples))
    out = {"mc": [], "rolling": []}
    for s in samples["tiny_mc"]:
        lls = []
        for context, continuation in s["arguments"]:
            ctx, cont = encode_pair(tok, context, continuation)
            lls.append(loglikelihood(model, ctx or [a.prefix_token_id], cont))
        out["mc"].append(lls)
    for s in samples["tiny_ppl"]:
        (text,) = s["arguments"][0][:1]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out["rolling"].append(loglikelihood(model, [a.prefix_token_id], ids))
    json.dump(out, open(a.out, "w"))


if __name__ == "__main__":
    main()
