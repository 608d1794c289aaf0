"""The serving files `trainers/write_space.py` writes for a checkpoint, used as their users use them: the Endpoint
handler called with the request body the Inference Endpoints service sends, and the Gradio Space started on
127.0.0.1 and called with gradio_client and from a headless Chromium that uploads an image."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml
from PIL import Image

from modeling_capt import CaptAdapterConfig, CaptForImageClassification
from trainers.write_space import SERVING_FILES, write_space

from browser import ChromiumPage, find_chromium
from conftest import CLASS_NAMES, REPO_ROOT, make_tiny_clip


def _save_checkpoint(folder, tokenizer, image_processor) -> str:
    model = CaptForImageClassification.from_clip(
        make_tiny_clip(tokenizer), CLASS_NAMES, tokenizer=tokenizer, image_processor=image_processor,
        adapter_config=CaptAdapterConfig(mgde_num_clusters=3),
    )
    model.save_pretrained(folder)
    return str(folder)


def _png_bytes(color=(200, 20, 20)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buffer, "PNG")
    return buffer.getvalue()


def test_write_space_into_the_checkpoint_and_into_a_space_folder(tmp_path):
    run = tmp_path / "run"
    checkpoint = run / "model"
    checkpoint.mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "README.md").write_text("the model card")
    Image.new("RGB", (8, 8)).save(run / "confusion_heatmap.png")  # where the trainer writes it: beside model/

    written = write_space(str(checkpoint))
    assert sorted(os.path.basename(p) for p in written) == sorted([*SERVING_FILES, "confusion_heatmap.png"])
    assert (checkpoint / "README.md").read_text() == "the model card"  # the model card stays
    assert not (checkpoint / "serving.json").exists()  # the app serves its own folder
    assert (checkpoint / "confusion_heatmap.png").is_file()

    space = tmp_path / "space"
    write_space(str(checkpoint), str(space), model_id="org/capt-x")
    assert json.loads((space / "serving.json").read_text()) == {"model": "org/capt-x"}
    card = yaml.safe_load((space / "README.md").read_text().split("---\n")[1])
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py" and card["models"] == ["org/capt-x"]
    write_space(str(checkpoint), str(tmp_path / "local"))
    assert json.loads((tmp_path / "local" / "serving.json").read_text()) == {"model": "../run/model"}

    with pytest.raises(FileNotFoundError, match="not a saved checkpoint"):
        write_space(str(tmp_path / "space"))


@pytest.mark.slow
def test_endpoint_handler_answers_the_requests_the_endpoints_service_sends(tmp_path, tokenizer, image_processor):
    checkpoint = _save_checkpoint(tmp_path / "model", tokenizer, image_processor)
    write_space(checkpoint)
    spec = importlib.util.spec_from_file_location("capt_endpoint_handler", os.path.join(checkpoint, "handler.py"))
    handler_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(handler_module)  # as the service does: the file from the repository, not our package
    handler = handler_module.EndpointHandler(checkpoint)
    image = _png_bytes()

    # a JSON request: base64 text; top_k from parameters
    rows = handler({"inputs": base64.b64encode(image).decode(), "parameters": {"top_k": 2}})
    assert len(rows) == 2 and rows[0]["label"] in CLASS_NAMES and rows[0]["score"] >= rows[1]["score"]
    # a binary request (the service passes the body's bytes, or an image it decoded), all classes by default
    everything = handler({"inputs": image})
    assert sorted(row["label"] for row in everything) == sorted(CLASS_NAMES)
    assert sum(row["score"] for row in everything) == pytest.approx(1.0, abs=1e-4)
    assert handler({"inputs": Image.open(io.BytesIO(image))}) == everything
    assert handler({"inputs": "data:image/png;base64," + base64.b64encode(image).decode()}) == everything
    # zero-shot over the caller's labels
    zero_shot = handler({"inputs": base64.b64encode(image).decode(),
                         "parameters": {"candidate_labels": ["a red square", "a zebra"]}})
    assert sorted(row["label"] for row in zero_shot) == ["a red square", "a zebra"]
    assert sum(row["score"] for row in zero_shot) == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="base64"):
        handler({"inputs": "not an image!"})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def running_space(tmp_path_factory):
    """The Space written for a tiny random CAPT checkpoint (with a heatmap), served by `python app.py` on
    127.0.0.1; yields its URL and folder."""
    pytest.importorskip("gradio")
    from transformers import AutoTokenizer, CLIPImageProcessor

    from conftest import EMBEDDED_MODEL

    root = tmp_path_factory.mktemp("space")
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                   do_center_crop=True, do_convert_rgb=True)
    checkpoint = _save_checkpoint(root / "run" / "model", AutoTokenizer.from_pretrained(EMBEDDED_MODEL), processor)
    Image.new("RGB", (64, 32), (0, 0, 255)).save(root / "run" / "confusion_heatmap.png")
    space = root / "space"
    write_space(checkpoint, str(space))
    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
               GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    log = open(root / "app.log", "w+")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while "Running on" not in (root / "app.log").read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the Space did not start:\n" + (root / "app.log").read_text()[-3000:])
            time.sleep(0.5)
        yield url, space
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.mark.slow
def test_the_space_answers_gradio_client(running_space, tmp_path):
    from gradio_client import Client, handle_file

    url, _ = running_space
    image = tmp_path / "red.png"
    image.write_bytes(_png_bytes())
    client = Client(url, verbose=False, download_files=str(tmp_path))
    result = client.predict(handle_file(str(image)), api_name="/classify")
    assert sorted(row["label"] for row in result["confidences"]) == sorted(CLASS_NAMES)
    assert result["label"] == result["confidences"][0]["label"]
    result = client.predict(handle_file(str(image)), "red, blue, a zebra", api_name="/zero_shot")
    assert sorted(row["label"] for row in result["confidences"]) == ["a zebra", "blue", "red"]


@pytest.mark.slow
def test_the_space_shows_the_class_probabilities_in_a_browser(running_space, tmp_path):
    binary = find_chromium()
    if binary is None:
        pytest.skip("no Chromium here (apt-get install chromium-headless-shell)")
    pytest.importorskip("websockets")
    url, _ = running_space
    image = tmp_path / "red.png"
    image.write_bytes(_png_bytes())
    page = ChromiumPage(binary, str(tmp_path / "profile"))
    try:
        page.goto(url)
        page.wait_for("document.querySelector('#classify-image input[type=file]') !== null")
        assert page.js("document.body.innerText.includes('Confusions')")  # the heatmap's tab
        assert page.js("document.title") == "capt: run"  # named after the run folder, not its model/
        page.set_file("#classify-image input[type=file]", str(image))
        page.wait_for("document.querySelector('#classify-image img') !== null", timeout=30)
        # the click can come before the upload is done: click until the output shows percentages
        shown = None
        deadline = time.monotonic() + 60
        while shown is None and time.monotonic() < deadline:
            page.js("document.getElementById('classify-button').click()")
            try:
                shown = page.wait_for("(() => { const text = document.getElementById('classify-output').innerText;"
                                      " return text.includes('%') ? text : null; })()", timeout=10)
            except TimeoutError:
                pass
        page.screenshot(tmp_path / "space.png")  # a test artifact: the page as a person would see it
        assert shown, "the page never showed the class probabilities"
        lines = [line.strip() for line in shown.splitlines() if line.strip()]
        for name in CLASS_NAMES:
            assert name in lines, (name, lines)
        assert sum(line.endswith("%") for line in lines) == len(CLASS_NAMES)
    finally:
        page.close()
    assert (tmp_path / "space.png").stat().st_size > 1000
