"""Inference Endpoints handler for a checkpoint saved by the `capt` package (written by `capt-write-space`).

The Endpoints service imports this file from the repository root and calls `EndpointHandler(path)(data)` with the
request body: `{"inputs": <image>, "parameters": {...}}`, the image as base64 text (a JSON request) or as bytes / a
PIL image (a binary request, which the service decodes). Without `parameters.candidate_labels` it classifies over the
checkpoint's own classes (the `image-classification` pipeline, `parameters.top_k`); with them it scores those labels
(the `zero-shot-image-classification` pipeline, `parameters.hypothesis_template`). It needs only torch, transformers
and pillow: the model's code ships in the checkpoint (`trust_remote_code=True`).
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from PIL import Image
from transformers import pipeline


def load_image(value) -> Image.Image:
    """A PIL image from what a request carries: a PIL image, raw bytes, or base64 text (a `data:` URL too)."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, str):
        text = value.split(",", 1)[1] if value.startswith("data:") else value
        try:
            value = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as error:
            raise ValueError("inputs must be an image: base64 text, bytes or a PIL image") from error
    if isinstance(value, (bytes, bytearray)):
        return Image.open(io.BytesIO(value)).convert("RGB")
    raise ValueError(f"inputs must be an image: base64 text, bytes or a PIL image, got {type(value).__name__}")


class EndpointHandler:
    """Loads the checkpoint at `path` once; the zero-shot pipeline is built on the first request that needs it."""

    def __init__(self, path: str = ""):
        self.path = path or "."
        self.classifier = pipeline("image-classification", model=self.path, trust_remote_code=True)
        self._zero_shot = None

    @property
    def zero_shot(self):
        if self._zero_shot is None:
            self._zero_shot = pipeline("zero-shot-image-classification", model=self.path, trust_remote_code=True)
        return self._zero_shot

    def __call__(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """`[{"label": ..., "score": ...}, ...]`, best first."""
        inputs = data.get("inputs", data) if isinstance(data, dict) else data
        parameters = dict(data.get("parameters") or {}) if isinstance(data, dict) else {}
        image = load_image(inputs)
        labels = parameters.pop("candidate_labels", None)
        if labels:
            if isinstance(labels, str):  # "cat, dog" as a widget sends it
                labels = [label.strip() for label in labels.split(",") if label.strip()]
            kwargs = {key: parameters[key] for key in ("hypothesis_template",) if key in parameters}
            return self.zero_shot(image, candidate_labels=list(labels), **kwargs)
        top_k = parameters.get("top_k")
        return self.classifier(image, top_k=int(top_k) if top_k else len(self.classifier.model.config.id2label))
