"""Command-line flags made of the fields of configuration dataclasses.

A method's options are declared once, as fields of the configuration class that owns them (a PEFT-style adapter
config, a training-options dataclass); `flags_from_dataclasses` turns those fields into the dataclass
`HfArgumentParser` reads, and the flag class builds the configurations in its `__post_init__`, so a bad value is
refused, by the class that owns it, while the command line is parsed.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import field, fields


def _flag_type(annotation):
    """The type of the flag of a config field typed `annotation`: a list-valued field is a comma-separated string."""
    options = set(typing.get_args(annotation)) or {annotation}
    scalar = options - {type(None)}
    if len(scalar) == 1 and next(iter(scalar)) in (bool, int, float, str):
        return annotation
    return str | None if type(None) in options else str


def _flag_default(value):
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return value


def flags_from_dataclasses(name: str, sources, doc: str | None = None) -> type:
    """A dataclass of command-line flags made of the fields of configuration dataclasses.

    `sources` lists `(config_class, field_names)` pairs (`None`: every field). Each flag keeps its field's name,
    default and help; a list-valued field becomes a comma-separated string (`config_kwargs` turns it back). The
    configuration classes stay the one place each option is declared and validated: the flag class builds them in
    its `__post_init__`, so a bad value fails while the flags are parsed.
    """
    specs = []
    for source, names in sources:
        hints = typing.get_type_hints(source)
        for f in fields(source):
            if names is not None and f.name not in names:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            specs.append((f.name, _flag_type(hints[f.name]),
                          field(default=_flag_default(default), metadata=dict(f.metadata))))
    configs = [source for source, _ in sources]

    def __post_init__(self):
        for config_class in configs:
            config_class(**config_kwargs(self, config_class))

    cls = dataclasses.make_dataclass(name, specs, namespace={"__post_init__": __post_init__})
    cls.__doc__ = doc or f"Flags of {', '.join(config.__name__ for config in configs)}."
    cls.__module__ = sys._getframe(1).f_globals.get("__name__", __name__)
    return cls


def config_kwargs(flags, config_class) -> dict:
    """The keyword arguments of `config_class` that `flags` holds, comma lists turned back into lists."""
    hints = typing.get_type_hints(config_class)
    kwargs = {}
    for f in fields(config_class):
        if not hasattr(flags, f.name):
            continue
        value = getattr(flags, f.name)
        if isinstance(value, str) and _flag_type(hints[f.name]) != hints[f.name]:
            value = parse_comma_list(f.name, value, hints[f.name])
        kwargs[f.name] = value
    return kwargs


def parse_comma_list(name: str, value: str, annotation=None) -> list:
    """`"-2,-1"` -> `[-2, -1]`: integers when the field holds integers (or `annotation` is None), else strings."""
    parts = [part.strip() for part in value.split(",") if part.strip()]
    options = typing.get_args(annotation) if annotation is not None else ()
    if annotation is not None and not any(option is int or typing.get_args(option) == (int,) for option in options):
        return parts
    try:
        return [int(part) for part in parts]
    except ValueError:
        raise ValueError(f"--{name} must be a comma list of integers, got {value!r}") from None
