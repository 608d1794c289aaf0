"""The registry of training methods: `--method NAME` picks `METHODS[NAME]`.

Each entry is a `trainers.methods.base.Method` subclass in a module of its own. Adding a method means its model pair
in `modeling_capt/`, its module here, and one line below.
"""

from __future__ import annotations

from trainers.methods.anprompt import AnpromptMethod
from trainers.methods.base import Method, RunContext
from trainers.methods.capt import CaptMethod
from trainers.methods.coop import CoOpMethod
from trainers.methods.lora import LoraMethod
from trainers.methods.visprompt import VisPromptMethod
from trainers.methods.zeroshot import ZeroShotMethod


METHODS: dict[str, type[Method]] = {
    "zeroshot": ZeroShotMethod,
    "coop": CoOpMethod,
    "capt": CaptMethod,
    "visprompt": VisPromptMethod,
    "anprompt": AnpromptMethod,
    "lora": LoraMethod,
}


def get_method(name: str) -> type[Method]:
    """The method class registered as `name`; a `ValueError` naming the registered ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"--method must be one of {tuple(METHODS)}, got {name!r}") from None


__all__ = ["METHODS", "Method", "RunContext", "get_method"]
