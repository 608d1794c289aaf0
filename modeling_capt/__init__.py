"""capt: Confusion-Aware Prompt Tuning for CLIP, native to the Hugging Face stack."""

from .configuration_capt import DEFAULT_TEMPLATE, CaptAdapterConfig, CaptConfig
from .modeling_capt import (
    CaptForImageClassification,
    CaptForZeroShotImageClassification,
    CaptImageClassifierOutput,
    CaptModel,
    CaptPreTrainedModel,
    load_image_processor,
)

__all__ = [
    "DEFAULT_TEMPLATE",
    "CaptAdapterConfig",
    "CaptConfig",
    "CaptForImageClassification",
    "CaptForZeroShotImageClassification",
    "CaptImageClassifierOutput",
    "CaptModel",
    "CaptPreTrainedModel",
    "load_image_processor",
]
