"""CoOp: learnable context vectors shared by all classes, in front of each class name (Zhou et al., 2022)."""

from __future__ import annotations

from modeling_capt import PromptCLIPForImageClassification, PromptContextConfig
from trainers.flags import config_kwargs, flags_from_dataclasses
from trainers.methods.base import Method, RunContext


CoOpArguments = flags_from_dataclasses(
    "CoOpArguments", [(PromptContextConfig, None)], doc="The flags of `--method coop`: `PromptContextConfig`."
)


class CoOpMethod(Method):
    """Trains the context with the cross-entropy over the class prompts (the base class's training step)."""

    name = "coop"
    title = "CoOp"
    Arguments = CoOpArguments

    def build_model(self, run: RunContext):
        return run.build(PromptCLIPForImageClassification, use_learnable_context=True,
                         **config_kwargs(self.args, PromptContextConfig))

    @classmethod
    def trained_parts(cls, model_folder: str) -> str:
        return "Only the CoOp context vectors (learnable prompt tokens) are trained."
