"""Packaging for capt: confusion-aware prompt tuning for CLIP on the Hugging Face stack."""

from setuptools import find_packages, setup

setup(
    name="capt",
    version="0.1.0.dev0",
    description="Confusion-Aware Prompt Tuning (CAPT) for CLIP, native to transformers, accelerate and datasets",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_capt", "trainers", "dataset_scripts", "hub_cards", "embedded"]),
    # Data read at run time, found through the import system (dataset_scripts.cards, dataset_scripts.paths): the card
    # templates, and the embedded default model and data (about 3.5 MB), the trainer's defaults.
    package_data={
        "hub_cards": ["*.md", "serving/*"],  # serving/: the Space and Endpoint templates (trainers/write_space.py)
        "embedded": ["capt-tiny-fashion/*", "fashion-subset/*"],
        "dataset_scripts": ["noise_maps/*.json"],
    },
    zip_safe=False,  # the embedded model and data are read as files from disk
    # Only what the package imports (tests/test_packaging.py checks it): no evaluate (metrics are plain functions,
    # trainers/metrics.py), no sentencepiece (only a SigLIP tokenizer needs it: the `siglip` extra).
    install_requires=[
        # torch is pinned by the caller (see README): `pip install torch==2.13.0` takes the CPU build here.
        "torch>=2.4",
        "transformers>=5.0",
        "accelerate>=1.0",
        "datasets>=4.0",
        "pyarrow",  # read directly (Parquet shards, bank columns); datasets needs it too
        "huggingface_hub>=1.0",
        "safetensors",
        "tokenizers",
        "pillow",
        "pyyaml",
        "tqdm",
        "scipy",  # Stanford Cars and Flowers102 annotations (.mat)
        "numpy",
        "POT",  # VisPrompt's optimal-transport pass (trainers/ only; the modeling files never import it)
        "peft>=0.17",  # CLIP-LoRA, --method lora (trainers/ only: its saved model is merged and loads without peft)
    ],
    extras_require={
        # the Space written by trainers/write_space.py (the Endpoint handler needs nothing more than the package)
        "serve": ["gradio>=5"],
        "siglip": ["sentencepiece", "protobuf"],  # a SigLIP backbone's tokenizer
        "tensorboard": ["tensorboard"],  # --report_to tensorboard
        # setuptools: tests/test_packaging.py builds and installs the package without build isolation; gradio and
        # websockets: the Space's tests (gradio_client, and Chromium driven over its DevTools websocket); tensorboard:
        # the tracker test reads the events file back; olah: the local Hub server of the read-path tests
        "test": ["pytest>=8", "setuptools>=70.1", "gradio>=5", "websockets>=13", "tensorboard", "olah"],
    },
    entry_points={
        "console_scripts": [
            # trainers.cli runs a script's main(argv=None) and exits 0 (those mains return their results to Python
            # callers, which a console script would hand to sys.exit); build_benchmark's main returns an exit status.
            "capt-train = trainers.cli:train",
            "capt-evaluate = trainers.cli:evaluate",
            "capt-build-bank = trainers.cli:build_bank",
            "capt-build-benchmark = dataset_scripts.build_benchmark:main",
            "capt-protocol = trainers.cli:protocol",
            "capt-ablations = trainers.cli:ablations",
            "capt-build-embedded = trainers.cli:build_embedded",
            "capt-write-space = trainers.write_space:main",
        ],
    },
)
