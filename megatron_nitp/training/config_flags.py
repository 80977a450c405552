"""Command-line flags derived from megatron-core's config dataclass fields, as Megatron-LM 0.16.1
does (its ArgumentGroupFactory): the field gives the flag's name (`--num-layers` for
`num_layers`), dest, type, choices (a Literal), default and help (the field's docstring); the
field's `argparse_meta` metadata (megatron-core's, e.g. `--norm-epsilon` for `layernorm_epsilon`,
default None for `num_layers`) overrides them. A bool field is a switch: `--x` when it defaults
to False, `--no-x`/`--disable-x` when it defaults to True.

So a flag backed by TransformerConfig has megatron-core's meaning by construction; `overrides`
carries what megatron-nitp adds (a narrower set of choices it supports, a note in the help, a
dest kept for saved run configs).
"""

import ast
import functools
import importlib.util
import inspect
import os
import typing

# Where the config classes live: read from source, not imported (parsing the command line costs
# no megatron-core import; tests/unit/test_config_flags.py checks the reading against the class).
TRANSFORMER_CONFIG = ("transformer/transformer_config.py", "TransformerConfig")
_TYPES = {"Optional": typing.Optional, "Literal": typing.Literal, "Union": typing.Union,
          "List": typing.List, "list": list, "int": int, "float": float, "str": str,
          "bool": bool}


class Field(typing.NamedTuple):
    type: object
    default: object
    metadata: dict
    doc: str


@functools.lru_cache(maxsize=None)
def config_fields(config) -> dict:
    """{name: Field} of the dataclass `config` = (file under megatron/core, class name), from
    its source (found, not imported): the
    annotation, the literal default (or field(default=..., metadata=...)), the docstring after
    it. Fields whose default or type is not a literal are left out."""
    path, name = config
    roots = importlib.util.find_spec("megatron").submodule_search_locations  # nothing imported
    file = next(f for f in (os.path.join(r, "core", path) for r in roots) if os.path.isfile(f))
    with open(file) as f:
        tree = ast.parse(f.read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)
    out = {}
    body = cls.body
    for stmt, nxt in zip(body, body[1:] + [None]):
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        try:
            annotation = eval(ast.unparse(stmt.annotation), {"__builtins__": {}}, _TYPES)
            metadata = {}
            value = stmt.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "field":
                kw = {k.arg: k.value for k in value.keywords}
                metadata = ast.literal_eval(kw["metadata"]) if "metadata" in kw else {}
                value = kw["default"]
            default = ast.literal_eval(value) if value is not None else None
        except (ValueError, KeyError, NameError, SyntaxError, TypeError):
            continue
        doc = ""
        if (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            doc = " ".join(inspect.cleandoc(nxt.value.value).split())
        out[stmt.target.id] = Field(annotation, default, metadata, doc)
    return out


def _type_kwargs(annotation) -> dict:
    origin, inner = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union and len(inner) == 2 and type(None) in inner:  # Optional[X]
        return _type_kwargs(next(t for t in inner if t is not type(None)))
    if origin is typing.Literal:
        return {"type": type(inner[0]), "choices": list(inner)}
    if isinstance(annotation, type) and origin is None:
        return {"type": annotation}
    raise TypeError(f"{annotation}: no flag type for it (hand-list this flag)")


def flag_kwargs(config, name: str, **overrides):
    """(option strings, add_argument kwargs) for field `name` of `config`."""
    field = config_fields(config)[name]
    default = field.default
    flag = "--" + name.replace("_", "-")
    kwargs = dict(dest=name, default=default, help=field.doc.replace("%", "%%"))  # argparse
    kwargs.update(_type_kwargs(field.type))
    names = [flag]
    if kwargs.get("type") is bool:
        kwargs.pop("type")
        kwargs["action"] = "store_false" if default else "store_true"
        if default:
            names = ["--no-" + flag[2:], "--disable-" + flag[2:]]
    meta = dict(field.metadata.get("argparse_meta", {}))
    names = meta.pop("arg_names", names)
    kwargs.update(meta)
    note = overrides.pop("note", None)
    names = overrides.pop("names", names)
    kwargs.update(overrides)
    if "action" in kwargs and kwargs["action"] in ("store_true", "store_false"):
        kwargs.pop("choices", None)
    if note:
        kwargs["help"] = f"{kwargs['help']} {note}".strip()
    return names, kwargs


def add_config_flags(group, config, fields, overrides=None):
    """One flag per name in `fields` (a field of `config`), with `overrides[name]` applied."""
    overrides = overrides or {}
    for name in fields:
        names, kwargs = flag_kwargs(config, name, **overrides.get(name, {}))
        group.add_argument(*names, **kwargs)
