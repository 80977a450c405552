"""A transformers directory (Llama / Qwen2-MoE / Qwen3 / Qwen3-MoE / DeepseekV3) -> a megatron-nitp model-only checkpoint.

Two steps, so that the layout logic is megatron's own:
1. one process (TP1/PP1): map the HF tensors (hf_mapping), load them into a TP1 NITPGPTModel
   (strict), save a dist checkpoint ("staging");
2. `torchrun` with T*P*E ranks: build the chosen layout (TP/PP/EP, optionally VPP), load the
   staging checkpoint (dist checkpointing reshards: global keys), save it again at that layout.
With T*P*E = 1 step 1 writes the result directly.

The result is iteration 0 in the engine's format with `"release": true, "model_only": true` in
run_config.json: the engine loads the weights and starts a fresh optimizer, scheduler and
iteration counter. The run configuration is built typed: config.json's architecture, the
tokenizer and the layout are the parser's defaults, under which the user's flags (NITP,
--seq-length, ...) are parsed as the engine parses them; a flag that contradicts config.json is
refused; then it is frozen (training/run_config.py). If the HF directory carries
`nitp_head.safetensors` (tools/convert_checkpoint.py megatron-to-hf --keep-nitp-head) and NITP is
on, the head is restored; with no `--nitp`/`--no-nitp` flag, `nitp_head.json` turns NITP on.
"""

import glob
import json
import os
import shutil
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

import torch

from ..nitp.config import NITPConfigError
from ..training.checkpoint_io import (RUN_CONFIG, TRACKER, align_norm_keys, iteration_dir,
                                      json_safe_args, one_process_changes)
from ..training.run_config import RunConfig
from . import ConversionError
from .hf_deepseek import deepseek_arch_values
from .hf_export import CONFIG_KEY
from .hf_mapping import (ModelShape, effective_shared_expert_size, hf_to_megatron,
                         moe_layer_pattern, nitp_head_from_hf, shape_from_hf_config)

STAGING = ".hf_import_staging"
TOKENIZER_DIR = "tokenizer"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model",
                    "chat_template.jinja")


def read_hf_config(hf_dir: str) -> dict:
    if not os.path.isdir(hf_dir):
        raise ConversionError(f"{hf_dir}: no such directory")
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ConversionError(f"{hf_dir}: not a Hugging Face model directory (no config.json)")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def read_hf_tensors(hf_dir: str, basename: str = "model") -> Dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of its shards (index file), memory-mapped."""
    from safetensors.torch import load_file

    single = os.path.join(hf_dir, f"{basename}.safetensors")
    index = os.path.join(hf_dir, f"{basename}.safetensors.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            files = sorted({os.path.join(hf_dir, v) for v in json.load(f)["weight_map"].values()})
    else:
        found = glob.glob(os.path.join(hf_dir, "*.bin")) + glob.glob(os.path.join(hf_dir, "*.pt"))
        hint = " (only PyTorch .bin weights: re-save with safe_serialization=True)" if found else ""
        raise ConversionError(f"{hf_dir}: no {basename}.safetensors or index{hint}")
    tensors = {}
    for path in files:
        if not os.path.isfile(path):
            raise ConversionError(f"{path}: listed in the index but missing")
        try:
            tensors.update(load_file(path))
        except Exception as e:
            raise ConversionError(f"{path}: unreadable safetensors file ({e})") from None
    return tensors


@dataclass
class ImportPlan:
    run: RunConfig  # the run configuration at the chosen layout (saved with the checkpoint)
    state_dict: Dict[str, torch.Tensor]  # TP1 megatron tensors (vocab padded)
    shape: ModelShape
    tokenizer: dict  # run_config "tokenizer" entry
    hf_vocab_size: int
    notes: List[str]

    @property
    def nitp(self):
        return self.run.nitp_config

    @property
    def world_size(self) -> int:
        r = self.run
        return (r.tensor_model_parallel_size * r.pipeline_model_parallel_size
                * r.expert_model_parallel_size)


def moe_layer_freq_value(moe_layers: List[bool]) -> Union[int, List[int]]:
    """megatron's --moe-layer-freq for a per-layer pattern: the int N when the pattern is
    megatron's "every Nth layer" (so the engine's default 1 matches an all-MoE model), else the
    list."""
    for n in range(1, len(moe_layers) + 1):
        if moe_layers == moe_layer_pattern(n, len(moe_layers)):
            return n
    return [int(m) for m in moe_layers]


def compact_layer_freq(moe_layers: List[bool]) -> str:
    """moe_layer_freq_value as the flag's text."""
    freq = moe_layer_freq_value(moe_layers)
    return str(freq) if isinstance(freq, int) else "[" + ",".join(map(str, freq)) + "]"


# What the import chooses for training and a flag may change; every other value of
# _arch_values is the HF model's and a flag that disagrees is refused.
_TRAINING_CHOICES = ("attention_dropout", "hidden_dropout", "moe_router_dtype")


def _arch_values(s: ModelShape) -> dict:
    """The run configuration (flag dests, typed) of the HF model's architecture."""
    if s.rope_theta != int(s.rope_theta):
        raise ConversionError(f"config.json: rope_theta {s.rope_theta} is not an integer "
                              "(Megatron-LM's --rotary-base is one)")
    values = dict(num_layers=s.num_layers, hidden_size=s.hidden_size,
                  ffn_hidden_size=s.ffn_hidden_size, num_attention_heads=s.num_attention_heads)
    if s.mla:  # the KV latent replaces the KV heads
        values.update(deepseek_arch_values(s))
    else:
        values.update(group_query_attention=True, num_query_groups=s.num_query_groups,
                      kv_channels=s.head_dim, qk_layernorm=s.qk_layernorm)
    values.update(normalization="RMSNorm", swiglu=True, position_embedding_type="rope",
                  norm_epsilon=float(s.norm_eps), rotary_base=int(s.rope_theta),
                  max_position_embeddings=s.max_position_embeddings,
                  untie_embeddings_and_output_weights=not s.tied,
                  # Llama / Qwen2 have none of Megatron-LM's default biases and no dropout at train
                  add_bias_linear=False, attention_dropout=0.0, hidden_dropout=0.0)
    if s.num_experts:
        values.update(num_experts=s.num_experts, moe_router_topk=s.topk,
                      moe_router_pre_softmax=not s.norm_topk_prob,
                      moe_ffn_hidden_size=s.moe_ffn_hidden_size,
                      moe_layer_freq=moe_layer_freq_value(s.moe_layers))
        if s.shared_expert_size:
            values["moe_shared_expert_intermediate_size"] = s.shared_expert_size
    return values


_LAYOUT = ("tensor_model_parallel_size", "pipeline_model_parallel_size",
           "expert_model_parallel_size")


def _refuse_flags_against_the_model(args, fixed: dict, s: ModelShape) -> None:
    """A given flag (or --config key) that disagrees with what config.json, the HF directory or
    the tool's layout flags fix would build another model: one line naming it."""
    for dest in sorted(set(fixed) & args.explicit_dests):
        given, want = getattr(args, dest), fixed[dest]
        if dest == "moe_layer_freq":
            try:
                same = moe_layer_pattern(given, s.num_layers) == s.moe_layers
            except ConversionError:
                same = False
            want = compact_layer_freq(s.moe_layers)
        else:
            same = given == want
        flag = f"--{dest.replace('_', '-')}"
        if same:
            continue
        if dest in _LAYOUT:
            raise ConversionError(f"{flag} {given} in the extra flags: the layout is "
                                  f"hf-to-megatron's own {flag} ({want})")
        raise ConversionError(f"{flag} {given}: the Hugging Face model has {want} (the "
                              "architecture and tokenizer come from its directory; drop the flag)")


def _check_layout(s: ModelShape, tp: int, pp: int, ep: int, vpp_layers: Optional[int]):
    problems = []
    for what, n in (("attention heads", s.num_attention_heads),
                    ("query groups (KV heads)", s.num_query_groups),
                    ("FFN width", s.ffn_hidden_size)):
        if n % tp:
            problems.append(f"{what} {n} not divisible by --tensor-model-parallel-size {tp}")
    if s.num_experts:
        if s.num_experts % ep:
            problems.append(f"{s.num_experts} experts not divisible by "
                            f"--expert-model-parallel-size {ep}")
        if s.moe_ffn_hidden_size % tp:
            problems.append(f"expert width {s.moe_ffn_hidden_size} not divisible by TP {tp}")
    elif ep > 1:
        problems.append("--expert-model-parallel-size > 1 for a dense model")
    if s.num_layers % pp:
        problems.append(f"{s.num_layers} layers not divisible by --pipeline-model-parallel-size {pp}")
    elif vpp_layers and (s.num_layers // pp) % vpp_layers:
        problems.append(f"{s.num_layers // pp} layers per stage not divisible by "
                        f"--num-layers-per-virtual-pipeline-stage {vpp_layers}")
    if problems:
        raise ConversionError("layout does not fit the model: " + "; ".join(problems))


def _nitp_head_values(hf_dir: str, notes: List[str]) -> dict:
    """nitp_head.json (if any): NITP on with the exported head's settings (run-config values)."""
    path = os.path.join(hf_dir, "nitp_head.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        head = json.load(f)
    notes.append(f"NITP on from {path} (target layer {head['target_layer']})")
    return dict(nitp=True, nitp_target_layer=int(head["target_layer"]),
                nitp_shift=int(head["shift"]), nitp_loss_type=head["loss_type"],
                nitp_loss_weight=float(head["loss_weight"]),
                nitp_head_ffn_multiplier=int(head["head_ffn_multiplier"]),
                nitp_no_stop_grad=not head.get("stop_grad", True))


def _tokenizer_entry(hf_dir: str, save_dir: str, provenance: dict, hf_vocab: int,
                     notes: List[str]):
    """(run_config tokenizer entry, the run's tokenizer values: flag dests)."""
    tok = (provenance or {}).get("tokenizer") or {}
    present = [n for n in _TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, n))]
    if tok.get("type") == "NullTokenizer" or (not present and not tok):
        vocab = tok.get("vocab_size") or hf_vocab
        if not tok:
            notes.append("no tokenizer files: NullTokenizer over the model's vocabulary")
        # The engine's NullTokenizer adds the end-of-document id to --vocab-size.
        return ({"type": "NullTokenizer", "model": None},
                dict(tokenizer_type="NullTokenizer", vocab_size=int(vocab) - 1))
    target = os.path.abspath(os.path.join(save_dir, TOKENIZER_DIR))
    if tok.get("type") == "SentencePieceTokenizer" and "tokenizer.model" in present:
        model, kind = os.path.join(target, "tokenizer.model"), "SentencePieceTokenizer"
    else:
        model, kind = target, "HuggingFaceTokenizer"
    return ({"type": kind, "model": model, "copy_from": hf_dir, "files": present},
            dict(tokenizer_type=kind, tokenizer_model=model))


def _tokenizer_vocab(hf_dir: str, entry: dict) -> Optional[int]:
    """The vocabulary the engine will see for this tokenizer (read from the HF directory)."""
    if entry["type"] == "NullTokenizer":
        return None
    from ..data.tokenizers import build_tokenizer

    path = (os.path.join(hf_dir, "tokenizer.model") if entry["type"] == "SentencePieceTokenizer"
            else hf_dir)
    try:
        return build_tokenizer(entry["type"], path, None).vocab_size
    except Exception:  # an unusual tokenizer directory: fall back to the model's vocabulary
        return None


def _parse(extra_argv: List[str], defaults: dict):
    from ..training.arguments import parse_args

    try:
        return parse_args(extra_argv, defaults=defaults)
    except SystemExit as e:  # argparse already printed the usage error
        raise ConversionError(f"bad extra flags: {' '.join(extra_argv)}" if e.code != 0 else "") from None


def plan_import(hf_dir: str, save_dir: str, tp: int, pp: int, ep: int,
                extra_argv: List[str]) -> ImportPlan:
    """Everything but building models: read, validate, map. One-line ConversionErrors.

    The run configuration: the HF architecture, tokenizer and layout as the parser's defaults
    under the user's flags (megatron-nitp's own flags, parsed as the engine parses them), then
    frozen; what the weights decide (bf16, the vocabulary padding) is set by replace()."""
    cfg = read_hf_config(hf_dir)
    shape = shape_from_hf_config(cfg)
    notes: List[str] = []
    provenance = cfg.get(CONFIG_KEY) or {}
    hf_vocab = shape.vocab_size
    tok_entry, tok_values = _tokenizer_entry(hf_dir, save_dir, provenance, hf_vocab, notes)
    fixed = dict(_arch_values(shape), **tok_values, **dict(zip(_LAYOUT, (tp, pp, ep))))
    args = _parse(extra_argv, fixed)
    if "nitp" not in args.explicit_dests:  # neither --nitp nor --no-nitp: the exported head's
        head_values = _nitp_head_values(hf_dir, notes)
        if head_values:
            args = _parse(extra_argv, dict(fixed, **head_values))
    _refuse_flags_against_the_model(
        args, {k: v for k, v in fixed.items() if k not in _TRAINING_CHOICES}, shape)
    _check_layout(shape, tp, pp, ep, args.num_layers_per_virtual_pipeline_stage)
    from ..models.builder import padded_vocab_size  # imports megatron-core: after the checks
    hf = read_hf_tensors(hf_dir)
    shape.shared_expert_size = effective_shared_expert_size(hf, shape)
    sd = hf_to_megatron(hf, shape)
    padded = ((hf_vocab + tp - 1) // tp) * tp
    changes = {}
    dtype = sd["embedding.word_embeddings.weight"].dtype
    if dtype == torch.bfloat16:
        changes["bf16"] = True  # keep bf16 weights bf16 (the engine's --bf16 run format)
    elif dtype != torch.float32:
        notes.append(f"{dtype} weights stored as float32")
    # The engine sets vocab_size to the tokenizer's vocabulary and pads it; choose the divisor
    # that reproduces our padded size so `--load` passes its architecture check.
    vocab = int(provenance.get("tokenizer", {}).get("vocab_size")
                or _tokenizer_vocab(hf_dir, tok_entry) or hf_vocab)
    if (tok_entry["type"] != "NullTokenizer" and "vocab_size" in args.explicit_dests
            and args.vocab_size != vocab):
        raise ConversionError(f"--vocab-size {args.vocab_size}: the vocabulary is the Hugging "
                              f"Face tokenizer's ({vocab} ids); drop the flag")
    divisor = args.make_vocab_size_divisible_by
    if "make_vocab_size_divisible_by" not in args.explicit_dests:
        div = provenance.get("make_vocab_size_divisible_by")
        candidates = ([div] if div else []) + [128, 64, 32, 16, 8, 4, 2, 1]
        divisor = next((d for d in candidates if padded_vocab_size(vocab, d, tp) == padded), 1)
    if padded_vocab_size(vocab, divisor, tp) != padded:
        notes.append(f"the engine will pad the tokenizer's vocabulary ({vocab}) to a "
                     f"size other than the checkpoint's {padded} rows at TP {tp}")
    if padded != hf_vocab:
        notes.append(f"vocabulary padded with zero rows {hf_vocab} -> {padded} (TP {tp})")
        for name in ("embedding.word_embeddings.weight", "output_layer.weight"):
            if name in sd:
                t = sd[name]
                sd[name] = torch.cat([t, t.new_zeros(padded - hf_vocab, t.shape[1])])
    run = RunConfig.freeze(args).replace(
        vocab_size=vocab, padded_vocab_size=padded, make_vocab_size_divisible_by=divisor,
        **changes)
    nitp = run.nitp_config
    try:
        nitp.validate(run.num_layers, run.hidden_size, tp)
    except NITPConfigError as e:
        raise ConversionError(str(e)) from None
    if nitp.uses_head:
        head_file = os.path.join(hf_dir, "nitp_head.safetensors")
        if os.path.isfile(head_file) or os.path.isfile(head_file + ".index.json"):
            head = nitp_head_from_hf(read_hf_tensors(hf_dir, "nitp_head"))
            want = 2 * nitp.head_ffn_multiplier * run.hidden_size
            got = head["nitp_head.mlp.linear_fc1.weight"].shape[0]
            if got != want:
                raise ConversionError(f"{head_file}: head width {got // 2} != "
                                      f"--nitp-head-ffn-multiplier x hidden = {want // 2}")
            sd.update(head)
            notes.append("NITP head restored from nitp_head.safetensors")
        else:
            notes.append("NITP head freshly initialised (no nitp_head.safetensors)")
    return ImportPlan(run, sd, shape, tok_entry, hf_vocab, notes)


def save_tp1_checkpoint(plan: ImportPlan, out_dir: str, seed: int) -> None:
    """Step 1 (one process): the plan's tensors into a TP1 model, saved as a dist checkpoint."""
    from megatron.core import dist_checkpointing

    from ..models.builder import build_model_chunks, transformer_config_from_args
    from ..parallel.distributed import destroy_distributed_model_parallel, initialize_distributed

    # TP1/PP1, the local spec (the state_dict names hf_mapping produces), allgather dispatcher.
    run = plan.run.replace(**one_process_changes())
    initialize_distributed(seed=seed)
    try:
        config = transformer_config_from_args(run)
        (model,) = build_model_chunks(run, config, run.nitp_config)
        template = model.state_dict()
        missing = [k for k in template if k not in plan.state_dict and not k.endswith("_extra_state")
                   and not k.startswith("nitp_head.")]
        if missing:
            raise ConversionError(f"no HF tensor for megatron parameter(s): {', '.join(missing[:5])}")
        with torch.no_grad():
            for name, param in model.state_dict(keep_vars=True).items():
                if name in plan.state_dict:
                    src = plan.state_dict[name]
                    if src.shape != param.shape:
                        raise ConversionError(f"{name}: HF shape {tuple(src.shape)} != megatron "
                                              f"{tuple(param.shape)}")
                    param.copy_(src)
        os.makedirs(out_dir, exist_ok=True)
        dist_checkpointing.save({"model0": model.sharded_state_dict()}, out_dir)
    finally:
        destroy_distributed_model_parallel()


def reshard(staging_dir: str, out_dir: str) -> None:
    """Step 2 (every rank of a torchrun launch): load the staging checkpoint at the layout in
    its run_config.json, save it at that layout into out_dir."""
    from megatron.core import dist_checkpointing

    from ..models.builder import (build_model_chunks, transformer_config_from_args,
                                  virtual_pipeline_size)
    from ..parallel.distributed import destroy_distributed_model_parallel, initialize_distributed

    with open(os.path.join(staging_dir, RUN_CONFIG)) as f:
        saved = json.load(f)
    # This layout's own spec (Transformer Engine where it runs) and per-expert weights.
    run = RunConfig.from_saved(saved["args"], saved["nitp"]).replace(
        transformer_impl=None, moe_grouped_gemm=False)
    initialize_distributed(run.tensor_model_parallel_size, run.pipeline_model_parallel_size,
                           virtual_pipeline_size(run), 1, run.expert_model_parallel_size,
                           seed=run.seed)
    config = transformer_config_from_args(run)
    config.perform_initialization = False
    chunks = build_model_chunks(run, config, run.nitp_config)
    state = {f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)}
    saved_keys = dist_checkpointing.load_tensors_metadata(staging_dir).keys()
    for chunk_state in state.values():  # staging is local-spec; this layout may use TE
        align_norm_keys(chunk_state, saved_keys)
    loaded = dist_checkpointing.load(state, staging_dir)
    for i, c in enumerate(chunks):
        c.load_state_dict(loaded[f"model{i}"], strict=True)
    if torch.distributed.get_rank() == 0:
        os.makedirs(out_dir, exist_ok=True)
    torch.distributed.barrier()
    dist_checkpointing.save({f"model{i}": c.sharded_state_dict() for i, c in enumerate(chunks)},
                            out_dir)
    torch.distributed.barrier()
    destroy_distributed_model_parallel()


def write_release_files(plan: ImportPlan, iter_dir: str, hf_dir: str, save_dir: str) -> None:
    """run_config.json (release, model only) and the tokenizer copy."""
    tok = dict(plan.tokenizer)
    src, files = tok.pop("copy_from", None), tok.pop("files", [])
    if src:
        target = os.path.join(save_dir, TOKENIZER_DIR)
        os.makedirs(target, exist_ok=True)
        for name in files:
            shutil.copyfile(os.path.join(src, name), os.path.join(target, name))
    config = {"args": json_safe_args(plan.run), "nitp": plan.nitp.to_dict(), "iteration": 0,
              "consumed_samples": 0, "tokenizer": tok, "release": True, "model_only": True,
              "hf_vocab_size": plan.hf_vocab_size, "source": os.path.abspath(hf_dir)}
    with open(os.path.join(iter_dir, RUN_CONFIG), "w") as f:
        json.dump(config, f, indent=1)


def import_from_hf(hf_dir: str, save_dir: str, tp: int = 1, pp: int = 1, ep: int = 1,
                   extra_argv: Optional[List[str]] = None,
                   launch: Optional[Callable[[int, str, str], None]] = None,
                   log: Callable[[str], None] = print) -> dict:
    """Write the release checkpoint; `launch(nproc, staging, out)` runs `reshard` on nproc ranks
    (the tool re-executes itself under torchrun). Returns a summary dict."""
    extra_argv = list(extra_argv or [])
    if os.path.isdir(save_dir) and os.listdir(save_dir):
        raise ConversionError(f"{save_dir}: exists and is not empty (choose a new directory)")
    plan = plan_import(hf_dir, save_dir, tp, pp, ep, extra_argv)
    final = iteration_dir(save_dir, 0)
    tmp = final + ".tmp"
    staging = os.path.join(save_dir, STAGING)
    os.makedirs(save_dir, exist_ok=True)
    try:
        one = plan.world_size == 1 and not plan.run.num_layers_per_virtual_pipeline_stage
        save_tp1_checkpoint(plan, tmp if one else staging, plan.run.seed)
        write_release_files(plan, tmp if one else staging, hf_dir, save_dir)
        if not one:
            launch(plan.world_size, staging, tmp)
            shutil.copyfile(os.path.join(staging, "run_config.json"),
                            os.path.join(tmp, "run_config.json"))
            shutil.rmtree(staging)
        os.replace(tmp, final)
        with open(os.path.join(save_dir, TRACKER), "w") as f:
            f.write("0")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    a = plan.run
    return dict(
        architecture=plan.shape.architecture, save_dir=save_dir,
        parameters=sum(t.numel() for k, t in plan.state_dict.items() if not k.startswith("nitp_head.")),
        layout=dict(tensor=tp, pipeline=pp, expert=ep,
                    virtual_layers=a.num_layers_per_virtual_pipeline_stage),
        nitp=plan.nitp.enabled, tokenizer=plan.tokenizer.get("type"),
        engine_flags=_engine_flags(plan), notes=plan.notes)


def _engine_flags(plan: ImportPlan) -> str:
    """The flags that make the engine's --load accept this checkpoint."""
    a, tok = plan.run, plan.tokenizer
    flags = [f"--make-vocab-size-divisible-by {a.make_vocab_size_divisible_by}",
             f"--tokenizer-type {tok['type']}"]
    if tok.get("model"):
        flags.append(f"--tokenizer-model {tok['model']}")
    elif tok["type"] == "NullTokenizer":
        flags.append(f"--vocab-size {a.vocab_size - 1}")
    return " ".join(flags)
