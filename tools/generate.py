"""Generate text from a megatron-nitp checkpoint or from its Hugging Face export.

    python tools/generate.py --load CKPT_DIR [--iteration N] --prompt "Once upon" --max-new-tokens 20
    python tools/generate.py --hf HF_DIR --prompt-ids 5,17,3 --max-new-tokens 20 --print-ids
    ... --temperature 0.8 --top-k 40 --seed 1     (sampling; default: greedy)

One process, any checkpoint layout (it is loaded at TP1/PP1), the model configuration read from
the checkpoint (or config.json). Both backends share one generation loop (full recompute, no KV
cache), so a checkpoint and its export give the same tokens for the same flags. Generation stops
after the end-of-document token unless --ignore-eos. With --print-ids the last output line is the
generated ids (prompt excluded), comma-separated.
"""

import argparse
import json
import os
import sys
import warnings


PROG = "generate.py"


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--load", help="megatron-nitp checkpoint directory")
    src.add_argument("--hf", help="Hugging Face model directory (e.g. from convert_checkpoint.py)")
    p.add_argument("--iteration", type=int, default=None, help="checkpoint iteration (--load)")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (tokenized with the run's tokenizer)")
    prompt.add_argument("--prompt-ids", help="prompt token ids, comma-separated")
    p.add_argument("--max-new-tokens", type=int, required=True)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--greedy", action="store_true", help="argmax decoding (the default)")
    mode.add_argument("--temperature", type=float, default=None, help="sample at this temperature")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely (0: all)")
    p.add_argument("--seed", type=int, default=1234, help="sampling seed")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-document")
    p.add_argument("--print-ids", action="store_true",
                   help="last line: the generated ids, comma-separated")
    p.add_argument("--debug", action="store_true", help="tracebacks on errors")
    return p


class GenerateError(Exception):
    pass


def _parse_ids(text):
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t != ""]
    except ValueError:
        raise GenerateError(f"--prompt-ids {text!r}: expected comma-separated integers") from None
    if not ids:
        raise GenerateError("--prompt-ids: no ids given")
    return ids


def _megatron_backend(a):
    from megatron_nitp.convert.hf_tokenizer import build_run_tokenizer
    from megatron_nitp.inference.generate import megatron_logits_fn
    from megatron_nitp.training.checkpoint_io import load_model_single_process

    model, args, _ = load_model_single_process(a.load, a.iteration, drop_nitp_head=True)
    try:
        tok = build_run_tokenizer(args.run_config, base_dir=a.load)
        encode, decode, eos = tok.tokenize, tok.detokenize, tok.eod
    except Exception as e:
        if a.prompt is not None:
            raise GenerateError(f"the checkpoint's tokenizer cannot be loaded ({e}); "
                                "use --prompt-ids") from None
        encode = decode = None
        eos = None
    return megatron_logits_fn(model), args.padded_vocab_size, encode, decode, eos


def _hf_backend(a):
    import torch
    from transformers import AutoModelForCausalLM

    from megatron_nitp.inference.generate import hf_logits_fn

    if not os.path.isfile(os.path.join(a.hf, "config.json")):
        raise GenerateError(f"--hf {a.hf}: not a Hugging Face model directory (no config.json)")
    with open(os.path.join(a.hf, "config.json")) as f:
        config = json.load(f)
    model = AutoModelForCausalLM.from_pretrained(a.hf, local_files_only=True)
    model.eval()
    torch.set_grad_enabled(False)
    encode = decode = None
    has_tok = any(os.path.isfile(os.path.join(a.hf, n))
                  for n in ("tokenizer_config.json", "tokenizer.json"))
    if has_tok:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(a.hf, local_files_only=True)
        encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
        decode = lambda ids: tok.decode(ids)  # noqa: E731
    elif ((config.get("megatron_nitp") or {}).get("tokenizer") or {}).get("type") == "NullTokenizer":
        encode = lambda text: [int(t) for t in text.split()]  # noqa: E731
        decode = lambda ids: " ".join(str(i) for i in ids)  # noqa: E731
    eos = model.generation_config.eos_token_id
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return hf_logits_fn(model), model.config.vocab_size, encode, decode, eos


def run(a) -> int:
    if a.load is not None and not os.path.isdir(a.load):
        raise GenerateError(f"--load {a.load}: no such directory")
    if a.load is not None and a.iteration is None and not os.path.isfile(
            os.path.join(a.load, "latest_checkpointed_iteration.txt")):
        raise GenerateError(f"--load {a.load}: not a megatron-nitp checkpoint directory "
                            "(no latest_checkpointed_iteration.txt)")
    if a.hf is not None and not os.path.isdir(a.hf):
        raise GenerateError(f"--hf {a.hf}: no such directory")
    if a.max_new_tokens < 1:
        raise GenerateError("--max-new-tokens: must be >= 1")
    if a.temperature is not None and a.temperature <= 0:
        raise GenerateError("--temperature: must be > 0 (use --greedy for argmax)")
    prompt_ids = _parse_ids(a.prompt_ids) if a.prompt_ids is not None else None
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        backend = _megatron_backend(a) if a.load else _hf_backend(a)
        return _generate(a, prompt_ids, *backend)
    finally:
        if a.load:  # leave no megatron model-parallel state behind (callers may run us again)
            from megatron.core import parallel_state

            from megatron_nitp.parallel.distributed import destroy_distributed_model_parallel

            if parallel_state.model_parallel_is_initialized():
                destroy_distributed_model_parallel()


def _generate(a, prompt_ids, logits_fn, vocab, encode, decode, eos) -> int:
    from megatron_nitp.inference.generate import generate_ids

    if prompt_ids is None:
        if encode is None:
            raise GenerateError("no tokenizer for --prompt here; use --prompt-ids")
        prompt_ids = encode(a.prompt)
        if not prompt_ids:
            raise GenerateError("--prompt: tokenizes to nothing")
    bad = [i for i in prompt_ids if not 0 <= i < vocab]
    if bad:
        raise GenerateError(f"prompt ids {bad[:5]} outside the vocabulary [0, {vocab})")
    greedy = a.temperature is None
    out = generate_ids(logits_fn, prompt_ids, a.max_new_tokens, greedy=greedy,
                       temperature=a.temperature or 1.0, top_k=a.top_k, seed=a.seed,
                       eos_id=None if a.ignore_eos else eos)
    if decode is not None:
        try:
            print(f"prompt: {decode(prompt_ids)!r}")
            print(f"completion: {decode(out)!r}")
        except Exception:  # ids past the tokenizer's vocabulary (padding rows)
            print("completion: (contains ids outside the tokenizer's vocabulary)")
    print(f"generated {len(out)} tokens ({'greedy' if greedy else 'sampled'}"
          f"{', stopped at end-of-document' if eos is not None and out and out[-1] == eos and not a.ignore_eos else ''})")
    if a.print_ids:
        print(",".join(str(i) for i in out))
    return 0


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return run(a)
    except Exception as e:
        if a.debug:
            raise
        from megatron_nitp.training.checkpoint_io import CheckpointError

        if isinstance(e, (GenerateError, CheckpointError)):
            msg = str(e)
        else:
            msg = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
        print(f"{PROG}: error: {msg}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
