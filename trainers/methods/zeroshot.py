"""Zero-shot CLIP: the frozen model over the class prompts; nothing is trained."""

from __future__ import annotations

from dataclasses import dataclass

from trainers.methods.base import Method, RunContext


@dataclass
class ZeroShotArguments:
    """Zero-shot CLIP has no flags of its own."""


class ZeroShotMethod(Method):
    name = "zeroshot"
    title = "zero-shot CLIP"
    Arguments = ZeroShotArguments
    trains = False

    def build_model(self, run: RunContext):
        return run.zeroshot

    @classmethod
    def trained_parts(cls, model_folder: str) -> str:
        return "Nothing is trained: this is zero-shot CLIP over the class prompts."
