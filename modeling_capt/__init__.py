"""capt: prompt-learning CLIP models (zero-shot CLIP, CoOp, CAPT, VisPrompt, ANPrompt), native to the Hugging Face stack.

`PromptCLIP*` is the shared frozen-CLIP prompt model (zero-shot CLIP and CoOp); `Capt*` adds CAPT's Diff-Manner
adapters and MGDE on top of it; `VisPrompt*` conditions the context on each image; `Anprompt*` adds ANPrompt's
prompts in both towers and NRVPP.
"""

from .configuration_anprompt import AnpromptConfig, AnpromptPromptConfig
from .modeling_anprompt import (
    AnpromptForImageClassification,
    AnpromptForZeroShotImageClassification,
    AnpromptImageClassifierOutput,
    AnpromptModel,
)
from .auto import checkpoint_class, is_package_checkpoint, load_pretrained
from .configuration_capt import CaptAdapterConfig, CaptConfig
from .configuration_prompt_clip import DEFAULT_TEMPLATE, PromptCLIPConfig, PromptContextConfig, check_template
from .modeling_capt import (
    CaptForImageClassification,
    CaptForZeroShotImageClassification,
    CaptImageClassifierOutput,
    CaptModel,
    CaptPreTrainedModel,
)
from .modeling_prompt_clip import (
    PromptCLIPContext,
    PromptCLIPForImageClassification,
    PromptCLIPForZeroShotImageClassification,
    PromptCLIPImageClassifierOutput,
    PromptCLIPLayerState,
    PromptCLIPModel,
    PromptCLIPPreTrainedModel,
    load_image_processor,
    replace_context_tokens,
)
from .configuration_visprompt import VisPromptConfig, VisPromptContextConfig, VisPromptGuidanceConfig
from .modeling_visprompt import (
    VisPromptForImageClassification,
    VisPromptForZeroShotImageClassification,
    VisPromptImageClassifierOutput,
    VisPromptImageGuidance,
    VisPromptModel,
    VisPromptPreTrainedModel,
)

__all__ = [
    "AnpromptConfig",
    "AnpromptForImageClassification",
    "AnpromptForZeroShotImageClassification",
    "AnpromptImageClassifierOutput",
    "AnpromptModel",
    "AnpromptPromptConfig",
    "DEFAULT_TEMPLATE",
    "CaptAdapterConfig",
    "CaptConfig",
    "CaptForImageClassification",
    "CaptForZeroShotImageClassification",
    "CaptImageClassifierOutput",
    "CaptModel",
    "CaptPreTrainedModel",
    "PromptCLIPConfig",
    "PromptCLIPContext",
    "PromptCLIPForImageClassification",
    "PromptCLIPForZeroShotImageClassification",
    "PromptCLIPImageClassifierOutput",
    "PromptCLIPLayerState",
    "PromptCLIPModel",
    "PromptCLIPPreTrainedModel",
    "PromptContextConfig",
    "VisPromptConfig",
    "VisPromptContextConfig",
    "VisPromptForImageClassification",
    "VisPromptForZeroShotImageClassification",
    "VisPromptGuidanceConfig",
    "VisPromptImageClassifierOutput",
    "VisPromptImageGuidance",
    "VisPromptModel",
    "VisPromptPreTrainedModel",
    "check_template",
    "checkpoint_class",
    "is_package_checkpoint",
    "load_image_processor",
    "load_pretrained",
    "replace_context_tokens",
]
