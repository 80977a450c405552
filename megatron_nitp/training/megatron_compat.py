"""Megatron-LM 0.16.1 flags that megatron-nitp does not implement: each a no-op or a refusal.

Users bring Megatron-LM launch scripts. Every Megatron-LM pretraining flag they contain is either
honoured (declared in arguments.py with Megatron-LM's name, dest, type and default), or listed
here: accepted as a documented no-op with one notice (it only names what megatron-nitp always
does, or only changes speed or memory on a backend that lacks it), or refused before any work in
one line naming it, why, and what is valid. Never accepted and ignored.

Each entry is declared with Megatron-LM 0.16.1's option string, dest, type and default (from
megatron/training/arguments.py and the config dataclasses it derives flags from), so a script
parses exactly as it does there. A flag that arguments.py already declares (honoured) is skipped
here: when a helper implements one of these flags, its declaration wins and this entry is dead.

`check_megatron_compat(args)` runs at validation: it prints one notice per no-op flag given and
returns the first refusal (the caller raises it as a ConfigError).
"""

import argparse
import dataclasses
from typing import Callable, Optional

NOOP, REJECT, HONOURED = "no-op", "rejected", "honoured"

# Why a refusal is temporary: the issue #15 item (or model family) that will honour the flag.
_PENDING = "not supported yet"
_FSDP = ("Megatron-FSDP is not supported: megatron-nitp shards with megatron-core's DDP and "
         "--use-distributed-optimizer")


@dataclasses.dataclass(frozen=True)
class CompatFlag:
    flag: str
    dest: str
    kwargs: dict  # argparse keywords as Megatron-LM 0.16.1 declares the flag (default included)
    verdict: str  # NOOP or REJECT (HONOURED: handled by `apply`, no message)
    why: str
    # args -> verdict for this run, when it depends on other flags (e.g. ETP equal to TP)
    decide: Optional[Callable] = None
    apply: Optional[Callable] = None  # side effect of an honoured flag

    def given(self, args) -> bool:
        return getattr(args, self.dest, self.kwargs.get("default")) != self.kwargs.get("default")


def _store_true(flag, dest, verdict, why, **kw):
    return CompatFlag(flag, dest, dict(action="store_true", default=False), verdict, why, **kw)


def _store_false(flag, dest, verdict, why, **kw):
    return CompatFlag(flag, dest, dict(action="store_false", default=True), verdict, why, **kw)


def _value(flag, dest, type_, default, verdict, why, choices=None, nargs=None, **kw):
    kwargs = dict(type=type_, default=default)
    if choices is not None:
        kwargs["choices"] = choices
    if nargs is not None:
        kwargs["nargs"] = nargs
    return CompatFlag(flag, dest, kwargs, verdict, why, **kw)


def _no_position_embedding_verdict(args):
    # Megatron-LM 0.16.1 raises for it unless RoPE (validate_args): there it disables nothing.
    return NOOP if args.position_embedding_type == "rope" else REJECT


def _no_attention_mask_verdict(args):
    return REJECT if getattr(args, "reset_attention_mask", False) else NOOP


def _fsdp_strategy_verdict(args):
    return NOOP if args.data_parallel_sharding_strategy == "no_shard" else REJECT


TABLE = (
    # -- documented no-ops: what megatron-nitp always does, or speed/memory only -------------
    _store_true("--use-mcore-models", "deprecated_use_mcore_models", NOOP,
                "megatron-nitp always builds megatron-core models (deprecated in Megatron-LM "
                "too)"),
    _store_true("--use-flash-attn", "use_flash_attn", NOOP,
                "megatron-core models let Transformer Engine pick the attention kernel (speed "
                "only)"),
    _value("--attention-backend", "attention_backend", str, "auto", NOOP,
           "Transformer Engine's attention-kernel choice (speed only); megatron-nitp lets TE "
           "choose (auto)", choices=["flash", "fused", "unfused", "local", "auto"]),
    _store_true("--manual-gc", "manual_gc", NOOP,
                "Python's garbage-collection schedule (speed only); automatic collection is "
                "kept"),
    _value("--manual-gc-interval", "manual_gc_interval", int, 0, NOOP,
           "Python's garbage-collection schedule (speed only); automatic collection is kept"),
    _value("--empty-unused-memory-level", "empty_unused_memory_level", int, 0, NOOP,
           "torch.cuda.empty_cache() calls (allocator fragmentation, speed only) are not made",
           choices=[0, 1, 2]),
    _store_false("--no-mmap-bin-files", "mmap_bin_files", NOOP,
                 "how the .bin files are read (speed and memory only); megatron-nitp "
                 "memory-maps them"),
    _store_false("--no-create-attention-mask-in-dataloader",
                 "create_attention_mask_in_dataloader", NOOP,
                 "megatron-nitp's datasets build no attention mask unless "
                 "--reset-attention-mask (the causal one is built by the attention)",
                 decide=_no_attention_mask_verdict),
    _store_false("--no-check-for-nan-in-loss-and-grad", "check_for_nan_in_loss_and_grad", NOOP,
                 "the check only costs time: megatron-nitp always checks the loss and gradients "
                 "and skips a non-finite step (--max-bad-steps)"),
    _store_true("--enable-experimental", "enable_experimental", NOOP,
                "megatron-nitp uses no experimental megatron-core feature"),
    _store_false("--no-position-embedding", "add_position_embedding", NOOP,
                 "deprecated in Megatron-LM: with --position-embedding-type rope there is no "
                 "position table to disable (Megatron-LM refuses it otherwise; use "
                 "--position-embedding-type)", decide=_no_position_embedding_verdict),
    # -- refused: Megatron-FSDP (another data-parallel implementation) -----------------------
    _store_true("--use-megatron-fsdp", "use_megatron_fsdp", REJECT, _FSDP),
    _value("--data-parallel-sharding-strategy", "data_parallel_sharding_strategy", str,
           "no_shard", REJECT, _FSDP,
           choices=["no_shard", "optim", "optim_grads", "optim_grads_params"],
           decide=_fsdp_strategy_verdict),
    _store_true("--fsdp-double-buffer", "fsdp_double_buffer", REJECT, _FSDP),
    _store_true("--use-nccl-ub", "nccl_ub", REJECT, _FSDP),
    _store_true("--init-model-with-meta-device", "init_model_with_meta_device", REJECT,
                f"not supported (a Megatron-FSDP start-up path); {_FSDP}"),
    # Megatron-LM main (after 0.16.1), used by its DeepSeek-V3 Megatron-FSDP example.
    _value("--megatron-fsdp-grad-comm-dtype", "megatron_fsdp_grad_comm_dtype", str, None,
           REJECT, _FSDP),
    _value("--megatron-fsdp-main-grads-dtype", "megatron_fsdp_main_grads_dtype", str, None,
           REJECT, _FSDP),
)

BY_FLAG = {entry.flag: entry for entry in TABLE}

# The table's flags that build_parser declared from here (the others are arguments.py's own, so
# honoured there): the same set on every call, since the parser is built the same way.
DECLARED = set()


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse's errors (an unknown flag, an invalid choice) as one line naming the flag, like
    every other refusal, instead of the whole usage block first."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def add_megatron_compat_args(parser: argparse.ArgumentParser):
    """Declare the table's flags that arguments.py does not (an honoured flag wins)."""
    group = parser.add_argument_group(
        "Megatron-LM flags megatron-nitp accepts as no-ops or refuses "
        "(training/megatron_compat.py)")
    declared = set()
    for entry in TABLE:
        if entry.flag in parser._option_string_actions:
            continue
        declared.add(entry.flag)
        group.add_argument(entry.flag, dest=entry.dest,
                           help=f"Megatron-LM's flag, {entry.verdict}: {entry.why}."
                           .replace("%", "%%"),
                           **entry.kwargs)
    DECLARED.clear()
    DECLARED.update(declared)


def verdict(entry: CompatFlag, args) -> str:
    return entry.decide(args) if entry.decide else entry.verdict


def check_megatron_compat(args, log=print) -> Optional[str]:
    """Notices for the no-op flags given, side effects of the honoured ones; the first refusal
    as one line (None when every flag given is accepted)."""
    given = [e for e in TABLE if e.flag in DECLARED and e.given(args)]
    for entry in given:
        v = verdict(entry, args)
        if v == REJECT:
            value = getattr(args, entry.dest)
            shown = "" if isinstance(value, bool) else " " + (
                " ".join(map(str, value)) if isinstance(value, list) else str(value))
            return f"{entry.flag}{shown}: {entry.why}"
    for entry in given:
        v = verdict(entry, args)
        if v == NOOP:
            log(f"notice: {entry.flag}: accepted as a no-op: {entry.why}")
        elif v == HONOURED and entry.apply:
            entry.apply(args)
    return None
