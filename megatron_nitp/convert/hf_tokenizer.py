"""A run's tokenizer, rebuilt from run_config.json, and written as files `AutoTokenizer` loads.

- NullTokenizer (text = whitespace-separated ids): nothing to write; only the ids matter.
- HuggingFaceTokenizer: its files are copied; a bare tokenizer.json gets a tokenizer_config.json
  naming `PreTrainedTokenizerFast` and the special tokens.
- SentencePieceTokenizer: `tokenizer.model` is copied and a `tokenizer.json` is built from it with
  the `tokenizers` library: SentencePiece's own BPE/unigram vocabulary, byte fallback, and its
  whitespace handling (prepend "▁" when the model adds a dummy prefix, spaces as "▁"). The
  alternative, `LlamaTokenizer` converting `tokenizer.model` at load time, differs from
  SentencePiece on text that starts with a space (measured with transformers 5); the written
  tokenizer is checked against SentencePiece on sample text and a mismatch is reported.

The engine stores `args.vocab_size` = the tokenizer's vocabulary (for NullTokenizer that is
`--vocab-size` + 1: the end-of-document id is appended), which is what `build_run_tokenizer` undoes.
"""

import json
import os
import shutil
from typing import List, Optional, Tuple

SAMPLE_TEXTS = ("Hello world", " leading space", "two  spaces\nnew line\n\ttab",
                "ünïcödé ✓ 12345 😀", "The end.")


def tokenizer_entry(run_config: dict) -> dict:
    entry = dict(run_config.get("tokenizer") or {})
    args = run_config["args"]
    entry.setdefault("type", args.get("tokenizer_type", "NullTokenizer"))
    entry.setdefault("model", args.get("tokenizer_model"))
    return entry


def build_run_tokenizer(run_config: dict, base_dir: Optional[str] = None):
    """The run's tokenizer (megatron_nitp.data.tokenizers), or raise with a one-line reason.

    A relative tokenizer path is tried as given and then relative to `base_dir`.
    """
    from ..data.tokenizers import build_tokenizer, tokenizer_options

    entry = tokenizer_entry(run_config)
    kind, model = entry["type"], entry.get("model")
    if kind == "NullTokenizer":
        return build_tokenizer(kind, None, int(run_config["args"]["vocab_size"]) - 1)
    if model and not os.path.exists(model) and base_dir and not os.path.isabs(model):
        candidate = os.path.join(base_dir, model)
        model = candidate if os.path.exists(candidate) else model
    # GPT2BPETokenizer's files, TikTokenizer's pattern and size: the run's own flags.
    options = tokenizer_options(run_config["args"])
    options.update({k: entry[k] for k in ("vocab_file", "merge_file") if entry.get(k)})
    vocab_size = run_config["args"].get("vocab_size") if kind == "TikTokenizer" else None
    return build_tokenizer(kind, model, vocab_size, **options)


def special_ids(tokenizer) -> dict:
    pad = getattr(tokenizer, "pad", -1)
    return {"bos_token_id": getattr(tokenizer, "bos", None), "eos_token_id": tokenizer.eod,
            "pad_token_id": pad if pad is not None and pad >= 0 else None}


def export_tokenizer(tokenizer, out_dir: str) -> Tuple[List[str], Optional[str]]:
    """Write the tokenizer's files into out_dir; returns (written paths, warning or None)."""
    kind = tokenizer.tokenizer_type
    if kind == "NullTokenizer":
        return [], None
    if kind == "HuggingFaceTokenizer":
        written = tokenizer.save_to(out_dir)
        if not os.path.isfile(os.path.join(out_dir, "tokenizer_config.json")):
            written.append(_write_config(out_dir, tokenizer, _token_names_from_json(out_dir, tokenizer)))
        return written, None
    if kind == "GPT2BPETokenizer":  # vocab.json + merges.txt, and the same BPE as tokenizer.json
        written = tokenizer.save_to(out_dir)
        written.append(os.path.join(out_dir, "tokenizer.json"))
        tokenizer._tokenizer.save(written[-1])
        written.append(_write_config(out_dir, tokenizer, {"eos_token": "<|endoftext|>"}))
        return written, None
    if kind == "TikTokenizer":
        return [], "TikTokenizer has no Hugging Face form here: tokenizer not exported"
    return _export_sentencepiece(tokenizer, out_dir)


def _token_names_from_json(out_dir, tokenizer) -> dict:
    with open(os.path.join(out_dir, "tokenizer.json")) as f:
        vocab = json.load(f).get("model", {}).get("vocab", {})
    if isinstance(vocab, list):  # unigram: [[piece, score], ...]
        id_to_piece = {i: p[0] for i, p in enumerate(vocab)}
    else:
        id_to_piece = {i: p for p, i in vocab.items()}
    ids = special_ids(tokenizer)
    return {name: id_to_piece.get(ids[f"{name}_id"]) for name in ("bos_token", "eos_token", "pad_token")}


def _write_config(out_dir, tokenizer, names: dict, unk: Optional[str] = None) -> str:
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False,
              "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "model_max_length": 1_000_000_000}
    config.update({k: v for k, v in names.items() if v is not None})
    if unk:
        config["unk_token"] = unk
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return path


def _export_sentencepiece(tokenizer, out_dir):
    import sentencepiece
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    try:
        from transformers.convert_slow_tokenizer import SentencePieceExtractor
    except ImportError:  # pragma: no cover - transformers is a dependency of the converter
        return [], "transformers is not importable: tokenizer not exported"
    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, "tokenizer.model")
    shutil.copyfile(tokenizer.tokenizer_model, model_path)
    sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
    try:
        extractor = SentencePieceExtractor(model_path)
    except Exception as e:  # protobuf missing, ...
        return [model_path], f"tokenizer.json not built ({type(e).__name__}: {e}); only tokenizer.model copied"
    proto = extractor.proto
    unigram = proto.trainer_spec.model_type == 1
    byte_fallback = bool(proto.trainer_spec.byte_fallback)
    unk = sp.id_to_piece(sp.unk_id()) if sp.unk_id() >= 0 else None
    if unigram:
        kwargs = extractor.extract(models.Unigram)
        tok = Tokenizer(models.Unigram(kwargs["vocab"], kwargs["unk_id"], byte_fallback))
    else:
        kwargs = extractor.extract(models.BPE)
        tok = Tokenizer(models.BPE(vocab=kwargs["vocab"], merges=kwargs["merges"], unk_token=unk,
                                   fuse_unk=True, byte_fallback=byte_fallback))
    norm = []
    charsmap = proto.normalizer_spec.precompiled_charsmap
    if charsmap:
        norm.append(normalizers.Precompiled(charsmap))
    if proto.normalizer_spec.remove_extra_whitespaces:
        from tokenizers import Regex

        norm += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    dummy_prefix = proto.normalizer_spec.add_dummy_prefix
    if dummy_prefix:
        norm.append(normalizers.Prepend("▁"))
    norm.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(norm)
    dec = [decoders.Replace("▁", " ")]
    if byte_fallback:
        dec.append(decoders.ByteFallback())
    dec.append(decoders.Fuse())
    if dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    specials = [sp.id_to_piece(i) for i in range(sp.get_piece_size())
                if sp.is_control(i) or sp.is_unknown(i)]
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    json_path = os.path.join(out_dir, "tokenizer.json")
    tok.save(json_path)
    ids = special_ids(tokenizer)
    names = {name: sp.id_to_piece(ids[f"{name}_id"]) if ids[f"{name}_id"] is not None else None
             for name in ("bos_token", "eos_token", "pad_token")}
    config_path = _write_config(out_dir, tokenizer, names, unk)
    bad = [t for t in SAMPLE_TEXTS if tok.encode(t, add_special_tokens=False).ids != sp.encode(t)]
    warning = None
    if bad:
        warning = f"the exported tokenizer.json differs from SentencePiece on {bad[:2]!r}"
    return [model_path, json_path, config_path], warning
