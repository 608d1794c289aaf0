"""CoOp: learnable context vectors shared by all classes, in front of each class name (Zhou et al., 2022)."""

from __future__ import annotations

from dataclasses import dataclass, field

from modeling_capt import CaptConfig, CaptForImageClassification
from trainers.methods.base import Method, RunContext


@dataclass
class CoOpArguments:
    n_ctx: int = field(default=4, metadata={"help": "CoOp: number of learnable context tokens."})
    ctx_init: str | None = field(default="a photo of a", metadata={"help": "CoOp: words initialising the context."})


class CoOpMethod(Method):
    """Trains the context with the cross-entropy over the class prompts (the base class's training step)."""

    name = "coop"
    title = "CoOp"
    Arguments = CoOpArguments

    def config_overrides(self) -> dict:
        return {"use_learnable_context": True, "n_ctx": self.args.n_ctx, "ctx_init": self.args.ctx_init}

    def check(self, model_args) -> None:
        CaptConfig(**self.config_overrides())

    def build_model(self, run: RunContext):
        return run.build(CaptForImageClassification, **self.config_overrides())

    @classmethod
    def trained_parts(cls, model_folder: str) -> str:
        return "Only the CoOp context vectors (learnable prompt tokens) are trained."
