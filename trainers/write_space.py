"""Write the serving files for a saved checkpoint: a Gradio Space (`app.py`, `requirements.txt`) and an Inference
Endpoints `handler.py`.

```bash
python trainers/write_space.py outputs/capt-tiny-fashion/model                  # into the checkpoint folder
python trainers/write_space.py outputs/capt-tiny-fashion/model --output_dir space --model_id org/capt-x
cd space && python app.py                                                        # http://127.0.0.1:7860
```

Into the checkpoint folder, the files serve that folder (the model repository then carries its own demo and
Endpoint handler; `--push_to_hub` in the trainer writes them there). Into another folder, `serving.json` names the
model (`--model_id`, a Hub id, or else the checkpoint's path relative to that folder) and a Space card `README.md`
is written beside them. The run's `confusion_heatmap.png` (beside the checkpoint, or one folder up as the trainer
writes it) is copied along, and the app shows it in a tab. The templates are `hub_cards/serving/*`, package data.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil

import sys

import yaml

if __package__ in (None, ""):  # run as a script: `python trainers/write_space.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dataset_scripts.atomic_io import write_json_atomic, write_text_atomic  # noqa: E402
from dataset_scripts.cards import card_template  # noqa: E402


logger = logging.getLogger(__name__)

SERVING_FILES = ("app.py", "handler.py", "requirements.txt")  # in hub_cards/serving/
HEATMAP = "confusion_heatmap.png"


def find_heatmap(checkpoint: str) -> str | None:
    """The run's heatmap: in the checkpoint folder, or in its parent (the trainer's `OUTPUT_DIR/model` layout)."""
    for folder in (checkpoint, os.path.dirname(os.path.abspath(checkpoint))):
        path = os.path.join(folder, HEATMAP)
        if os.path.isfile(path):
            return path
    return None


def space_card(title: str, model_id: str | None) -> str:
    """A Space's `README.md`: the YAML the Hub reads (`sdk: gradio`, `app_file`, the model it uses) and one line."""
    metadata = {"title": title, "sdk": "gradio", "app_file": "app.py", "pinned": False}
    if model_id:
        metadata["models"] = [model_id]
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    return f"---\n{front}---\n\nA demo of `{model_id or title}`, a CLIP classifier trained with the `capt` package.\n"


def write_space(checkpoint: str, output_dir: str | None = None, model_id: str | None = None,
                heatmap: str | None = None) -> list[str]:
    """Write the serving files for `checkpoint` into `output_dir` (the checkpoint folder by default); returns the
    paths written. `heatmap` overrides the heatmap found beside the checkpoint."""
    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise FileNotFoundError(f"{checkpoint} is not a saved checkpoint (no config.json)")
    output_dir = output_dir or checkpoint
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for name in SERVING_FILES:
        path = os.path.join(output_dir, name)
        write_text_atomic(path, card_template(f"serving/{name}").read_text(encoding="utf-8"))
        written.append(path)
    if os.path.abspath(output_dir) != os.path.abspath(checkpoint):
        model = model_id or os.path.relpath(checkpoint, output_dir)
        write_json_atomic(os.path.join(output_dir, "serving.json"), {"model": model})
        title = model_id.split("/")[-1] if model_id else os.path.basename(os.path.abspath(checkpoint))
        write_text_atomic(os.path.join(output_dir, "README.md"), space_card(title, model_id))
        written += [os.path.join(output_dir, "serving.json"), os.path.join(output_dir, "README.md")]
    heatmap = heatmap or find_heatmap(checkpoint)
    if heatmap and os.path.abspath(heatmap) != os.path.abspath(os.path.join(output_dir, HEATMAP)):
        shutil.copyfile(heatmap, os.path.join(output_dir, HEATMAP))
        written.append(os.path.join(output_dir, HEATMAP))
    elif heatmap:
        written.append(heatmap)
    logger.info("serving files written to %s", output_dir)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a folder saved by the trainer (OUTPUT_DIR/model) or save_pretrained")
    parser.add_argument("--output_dir", default=None, help="where to write (default: the checkpoint folder)")
    parser.add_argument("--model_id", default=None, help="the Hub id the Space loads (default: the local path)")
    parser.add_argument("--heatmap", default=None, help=f"a heatmap image (default: {HEATMAP} beside the checkpoint)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for path in write_space(args.checkpoint, args.output_dir, args.model_id, args.heatmap):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
