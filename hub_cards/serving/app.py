"""A Gradio demo for a checkpoint saved by the `capt` package (written by `capt-write-space`).

Tabs: the checkpoint's own classes, zero-shot over labels you type, and (CAPT runs) the run's confusion heatmap
when `confusion_heatmap.png` is beside this file. The model is this folder, or the path / Hub id in `serving.json`
(`{"model": ...}`), or the `CAPT_MODEL` environment variable. `python app.py` serves it on
`GRADIO_SERVER_NAME:GRADIO_SERVER_PORT` (127.0.0.1:7860 by default). It needs only gradio, torch, transformers and
pillow: the model's code ships with the checkpoint (`trust_remote_code=True`).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline by default: no usage reports or version checks

import gradio as gr  # noqa: E402
from transformers import pipeline  # noqa: E402


HERE = os.path.dirname(os.path.abspath(__file__))


def model_location() -> str:
    if os.environ.get("CAPT_MODEL"):
        return os.environ["CAPT_MODEL"]
    settings = os.path.join(HERE, "serving.json")
    if os.path.isfile(settings):
        with open(settings, encoding="utf-8") as handle:
            model = json.load(handle)["model"]
        local = os.path.join(HERE, model)
        return local if os.path.exists(local) else model  # a path relative to this folder, or a Hub id
    return HERE


MODEL = model_location()
# the trainer saves to OUTPUT_DIR/model: name the demo after the run's folder then
_parts = os.path.normpath(os.path.abspath(MODEL) if os.path.exists(MODEL) else MODEL).split(os.sep)
TITLE = _parts[-2] if _parts[-1] == "model" and len(_parts) > 1 else _parts[-1]
classifier = pipeline("image-classification", model=MODEL, trust_remote_code=True)
CLASS_NAMES = [classifier.model.config.id2label[i] for i in sorted(classifier.model.config.id2label)]
_zero_shot = []  # built on first use: a second copy of the model


def classify(image) -> dict[str, float]:
    if image is None:
        raise gr.Error("Upload an image first.")
    return {row["label"]: row["score"] for row in classifier(image.convert("RGB"), top_k=len(CLASS_NAMES))}


def zero_shot(image, labels: str) -> dict[str, float]:
    if image is None:
        raise gr.Error("Upload an image first.")
    candidates = [label.strip() for label in (labels or "").split(",") if label.strip()]
    if len(candidates) < 2:
        raise gr.Error("Give at least two labels, separated by commas.")
    if not _zero_shot:
        _zero_shot.append(pipeline("zero-shot-image-classification", model=MODEL, trust_remote_code=True))
    return {row["label"]: row["score"] for row in _zero_shot[0](image.convert("RGB"), candidate_labels=candidates)}


HEATMAP = os.path.join(HERE, "confusion_heatmap.png")
# system fonts: the default theme would fetch its font from Google, and a demo must work offline
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])

with gr.Blocks(title=f"capt: {TITLE}") as demo:
    gr.Markdown(f"# {TITLE}\n"
                f"A CLIP classifier trained with the `capt` package. Classes: {', '.join(CLASS_NAMES)}.")
    with gr.Tab("Classify"):
        with gr.Row():
            image = gr.Image(type="pil", label="Image", elem_id="classify-image")
            probabilities = gr.Label(num_top_classes=len(CLASS_NAMES), label="Class probabilities",
                                     elem_id="classify-output")
        gr.Button("Classify", variant="primary", elem_id="classify-button").click(classify, image, probabilities, api_name="classify")
    with gr.Tab("Zero-shot"):
        with gr.Row():
            with gr.Column():
                zs_image = gr.Image(type="pil", label="Image", elem_id="zero-shot-image")
                labels = gr.Textbox(label="Labels, separated by commas", value=", ".join(CLASS_NAMES[:3]),
                                    elem_id="zero-shot-labels")
            zs_probabilities = gr.Label(label="Label probabilities", elem_id="zero-shot-output")
        gr.Button("Score labels", variant="primary", elem_id="zero-shot-button").click(zero_shot, [zs_image, labels], zs_probabilities,
                                                           api_name="zero_shot")
    if os.path.isfile(HEATMAP):
        with gr.Tab("Confusions"):
            gr.Markdown("The confusion matrices of zero-shot CLIP and the trained model on the test images.")
            gr.Image(HEATMAP, label="Confusion heatmap", interactive=False, elem_id="confusion-heatmap")


if __name__ == "__main__":
    demo.launch(theme=THEME, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
