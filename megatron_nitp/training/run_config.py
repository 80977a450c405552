"""The run's configuration: one typed, read-only object, resolved once.

    argv + --config YAML --parse--> flags (arguments.py: Megatron-LM's dests and defaults)
        --> derived defaults, validation (validation.py), data lists, tokenizer vocabulary,
            what a resumed checkpoint fixes (resolve.py)
        --> RunConfig.freeze()  --> model builder, engine, loggers, checkpoints, convert/, tools/

Everything downstream reads the RunConfig; nothing writes it (an assignment raises). A component
that needs a changed run (conversion's one process, a tool's TP1 load) builds a copy with
`replace()`, which checks the new values the same way.

The sections are the parser's argument groups (model, moe, nitp, training, schedule, precision,
parallel, data, checkpoint, logging, compat), each a frozen dataclass whose fields are the flags'
dests, typed from the flags' argparse types: the parser is the one list of options, so the
sections cannot drift from it. What no flag sets - values the resolution derives - is declared
by hand in `Resolved`. Code reads a value flat (`run.num_layers`, as Megatron-LM's `args`) or by
section (`run.parallel`); the NITP objective itself is the typed `run.nitp_config`.
"""

import argparse
import dataclasses
import functools
import types
import typing
from typing import Any, Optional

from ..nitp.config import NITPConfig

# Parser group title (its start) -> section. Several groups may share a section.
_SECTIONS = (
    ("model", "model"), ("mixture of experts", "moe"), ("NITP", "nitp"),
    ("training", "training"), ("optimizer and schedule", "schedule"),
    ("speed", "precision"), ("mixed precision", "precision"),
    ("activation recompute", "precision"), ("fp8 and TP overlap", "precision"),
    ("parallelism", "parallel"), ("data and tokenizer", "data"),
    ("checkpointing", "checkpoint"), ("evaluation and logging", "logging"),
    ("Megatron-LM flags", "compat"), ("options", "cli"),
)


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Values the resolution derives (no flag sets them); saved with the run config."""
    model_family: str = "gpt"
    data_parallel_size: Optional[int] = None
    padded_vocab_size: Optional[int] = None
    # A dry run's "needs at run time" lines (validation.py).
    run_time_needs: Optional[list] = None
    # A single-process copy of a trained run (checkpoint_io.single_process_config): the saved
    # layout, and whether its experts were grouped-GEMM weights.
    saved_layout: Optional[dict] = None
    saved_moe_grouped_gemm: bool = False
    # A loaded checkpoint (checkpoint_io.load_model_single_process).
    iteration: Optional[int] = None
    run_config: Optional[dict] = None


class FrozenConfigError(AttributeError):
    """An assignment to the RunConfig (a programming error: build a copy with replace())."""


def _annotation(action: argparse.Action):
    """The field type a flag's values have after parsing."""
    if isinstance(action, argparse.BooleanOptionalAction) or (
            action.nargs == 0 and isinstance(action.const, bool)):
        return bool
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        return Optional[list]
    if action.type in (int, float, str):
        return action.type if action.default is not None else Optional[action.type]
    if action.type is None and action.choices is None and isinstance(action.default, str):
        return str
    return Any  # a converter (signal names, ranges), or a value resolution re-types


def _check(name: str, annotation, value) -> None:
    if annotation is Any or value is None and typing.get_origin(annotation) is typing.Union:
        return
    want = typing.get_args(annotation)[0] if typing.get_origin(annotation) is typing.Union \
        else annotation
    ok = isinstance(value, want) or (want is float and isinstance(value, int)
                                     and not isinstance(value, bool)) \
        or (want is list and isinstance(value, tuple))
    if not ok or (want is int and isinstance(value, bool)):
        raise TypeError(f"run config: {name} = {value!r} is not {getattr(want, '__name__', want)}")


# Fields resolution re-types (after parsing): their annotation follows what the run reads.
_RETYPED = {"moe_layer_freq": Any}


@functools.lru_cache(maxsize=None)
def _schema(model_family: str = "gpt"):
    """({section: frozen dataclass type}, {dest: section}, {dest: default}) from the parser."""
    from .arguments import build_parser

    parser = build_parser(model_family)
    fields, owner, defaults = {}, {}, {}
    for group in parser._action_groups:
        section = next((s for title, s in _SECTIONS if group.title.startswith(title)), None)
        for action in group._group_actions:
            if action.dest in ("help",) or action.dest in owner:
                continue
            assert section is not None, f"argument group {group.title!r}: no run-config section"
            annotation = _RETYPED.get(action.dest, _annotation(action))
            fields.setdefault(section, []).append(
                (action.dest, annotation, dataclasses.field(default=None)))
            owner[action.dest] = section
            defaults[action.dest] = action.default
    for f in dataclasses.fields(Resolved):
        assert f.name not in owner, f"{f.name}: both a flag and a resolved value"
    classes = {s: dataclasses.make_dataclass(f"{s.capitalize()}Flags", fs, frozen=True)
               for s, fs in fields.items()}
    clash = set(classes) & (set(owner) | {f.name for f in dataclasses.fields(Resolved)})
    assert not clash - {"nitp"}, f"section names shadow values: {clash}"
    return classes, owner, defaults


def flag_sections(model_family: str = "gpt") -> dict:
    """{dest: section} of every flag."""
    return _schema(model_family)[1]


def fields_by_name(config_class, args) -> dict:
    """Megatron-LM's rule (core_transformer_config_from_args, get_megatron_optimizer_config):
    every field of the megatron-core config whose name is a flag's dest takes that flag's value,
    None included (MLA's --q-lora-rank None is a full-rank query, not the field's 512), so a
    TransformerConfig-backed flag reaches megatron-core by construction. The Megatron-LM flags
    this project accepts as documented no-ops or refuses (training/megatron_compat.py) are not
    taken: they stay no-ops."""
    sections = flag_sections()
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)
            if f.init and sections.get(f.name) not in (None, "compat") and hasattr(args, f.name)}


class RunConfig:
    """Read-only flat access (`run.lr`), sections (`run.schedule.lr`), `run.nitp_config`."""

    __slots__ = ("_values", "_sections", "resolved", "nitp_config", "explicit_dests")

    @classmethod
    def freeze(cls, args, nitp_config: Optional[NITPConfig] = None) -> "RunConfig":
        """The resolved flags (a parsed Namespace, or anything with the dests) made final."""
        values = dict(vars(args))
        explicit = getattr(args, "explicit_dests", frozenset())
        return cls._build(values, nitp_config, frozenset(explicit))

    @classmethod
    def from_saved(cls, saved_args: dict, nitp: Optional[dict] = None,
                   model_family: Optional[str] = None) -> "RunConfig":
        """A checkpoint's run_config.json `args` (and `nitp`): today's defaults for flags (NITP
        fields) added since, the saved values for the rest (keys no flag has any more are
        dropped)."""
        family = model_family or saved_args.get("model_family") or "gpt"
        _, owner, defaults = _schema(family)
        resolved = {f.name for f in dataclasses.fields(Resolved)}
        values = dict(defaults)
        values.update({k: v for k, v in saved_args.items() if k in owner or k in resolved})
        values["model_family"] = family
        if nitp is not None:  # the same rule for the NITP entry: fields added since default
            known = {f.name for f in dataclasses.fields(NITPConfig)}
            nitp = NITPConfig(**{k: v for k, v in nitp.items() if k in known})
        return cls._build(values, nitp, frozenset())

    @classmethod
    def _build(cls, values: dict, nitp_config, explicit) -> "RunConfig":
        classes, owner, defaults = _schema(values.get("model_family") or "gpt")
        resolved_names = {f.name for f in dataclasses.fields(Resolved)}
        unknown = set(values) - set(owner) - resolved_names
        if unknown:
            raise TypeError(f"run config: no flag or resolved value {sorted(unknown)}")
        self = object.__new__(cls)
        sections = {}
        for s, klass in classes.items():  # a dest names one flag, in one section
            kwargs = {f.name: values.get(f.name, defaults[f.name])
                      for f in dataclasses.fields(klass)}
            for f in dataclasses.fields(klass):
                _check(f.name, f.type, kwargs[f.name])
            sections[s] = klass(**kwargs)
        resolved = Resolved(**{k: v for k, v in values.items() if k in resolved_names})
        for f in dataclasses.fields(Resolved):
            _check(f.name, f.type, getattr(resolved, f.name))
        flat = {}
        for section in sections.values():
            flat.update(vars(section))
        flat.update(vars(resolved))
        if nitp_config is None and flat.get("num_layers") is not None:
            nitp_config = NITPConfig.from_args(types.SimpleNamespace(**flat))
        setter = object.__setattr__
        setter(self, "_values", types.MappingProxyType(flat))
        setter(self, "_sections", types.MappingProxyType(sections))
        setter(self, "resolved", resolved)
        setter(self, "nitp_config", nitp_config)
        setter(self, "explicit_dests", explicit)
        return self

    def replace(self, nitp_config: Optional[NITPConfig] = None, **changes) -> "RunConfig":
        """A copy with `changes` (dests or resolved names), checked as at freeze. The NITP
        config is `nitp_config` if given, else rebuilt from the flags when one of them changes.
        Nothing is re-derived: `replace(num_layers=8)` keeps the resolved --nitp-target-layer
        and --ffn-hidden-size; a change that should move derived values names them too (or
        resolves a new argv)."""
        values = dict(self._values)
        values.update(changes)
        if nitp_config is None and not any(k.startswith("nitp") for k in changes):
            nitp_config = self.nitp_config
        return self._build(values, nitp_config, self.explicit_dests)

    # -- reading ---------------------------------------------------------------------------
    def __getattr__(self, name: str):
        # Only called for names that are not slots: a section, else a value.
        sections = object.__getattribute__(self, "_sections")
        if name in sections and name != "nitp":  # `nitp` is the --nitp switch
            return sections[name]
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(f"RunConfig has no value {name!r}") from None

    def section(self, name: str):
        return self._sections[name]

    @property
    def __dict__(self):  # vars(run): the flat values, read-only
        return self._values

    def to_dict(self) -> dict:
        return dict(self._values)

    def __setattr__(self, name, value):
        raise FrozenConfigError(f"RunConfig is read-only ({name} = {value!r}): resolve it "
                                "before freeze() or build a copy with replace()")

    def __delattr__(self, name):
        raise FrozenConfigError(f"RunConfig is read-only (del {name})")

    def __copy__(self):
        return self

    def __reduce__(self):  # pickling (a spawned worker): rebuilt, and checked, from the values
        return _rebuild, (dict(self._values), self.nitp_config, self.explicit_dests)

    def __deepcopy__(self, memo):
        return self

    def __repr__(self):
        return f"RunConfig({', '.join(f'{k}={v!r}' for k, v in sorted(self._values.items()))})"

    def __eq__(self, other):  # every value the run reads, the NITP objective included
        if not isinstance(other, RunConfig):
            return NotImplemented
        return self._values == other._values and self.nitp_config == other.nitp_config

    __hash__ = None


def _rebuild(values, nitp_config, explicit):
    return RunConfig._build(values, nitp_config, explicit)

