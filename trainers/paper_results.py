"""Published numbers that `trainers/run_protocol.py` compares its tables with (CLIP ViT-B/16, mean of 3 seeds).

Transcribed from the CAPT paper (`shared/seeds/001_f208b4d011f549e1.txt`), Tables 1-4, for the rows this project
can run: CAPT and CoOp. The CAPT paper lists no zero-shot CLIP row; the zero-shot base-to-novel numbers come from
ANPrompt's Table I (`shared/seeds/003_1bef8ddbdb0cce5d.txt`), the source `PROTOCOL.md` names for them.

Numbers are copied as printed, typos included (a test re-derives what can be re-derived, and the known
inconsistencies are listed beside each table). Keys are the dataset registry keys of
`dataset_scripts.coop_datasets`, plus `"average"` for the papers' average column or row. Methods are keyed like
the trainer's `--method`: `"capt"`, `"coop"`, `"zeroshot"`.

Example:

```python
>>> from trainers.paper_results import paper_value
>>> paper_value("base2novel", "capt", "dtd", "hm")
79.51
>>> paper_value("few_shot", "coop", "average", 4)
73.59
>>> paper_value("cross_dataset", "zeroshot", "dtd", "accuracy") is None
True
```
"""

from __future__ import annotations


#: The papers' spelling of each dataset, in the order of their tables.
DISPLAY_NAMES = {
    "average": "Average",
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenetv2": "ImageNet-V2",
    "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
}

#: How each method's row is labelled in the papers.
METHOD_NAMES = {"capt": "CAPT", "coop": "CoOp", "zeroshot": "zero-shot CLIP"}

# ------------------------------------------------------------------------------------------------ base-to-novel
# CAPT paper, Table 1 ("Comparison with other methods on base-to-new generalization with 16-shot"): (base, novel, HM).
# Averages are the mean over the 11 datasets, HM of the average base and novel (as in CoCoOp). Inconsistencies as
# printed: CoOp ImageNet novel 68.78 (its HM 71.92 and the novel average fit 67.88, CoOp's published value); CAPT's
# Average novel 80.90 and HM 83.90 fit neither its per-dataset rows (mean novel 80.73, HM of averages 84.03).
_TABLE_1 = {
    "capt": {
        "average": (87.41, 80.90, 83.90),
        "imagenet": (80.51, 75.13, 77.73),
        "caltech101": (99.10, 96.34, 97.70),
        "oxford_pets": (96.44, 97.71, 97.07),
        "stanford_cars": (83.43, 84.26, 83.84),
        "oxford_flowers": (98.78, 82.91, 90.15),
        "food101": (92.43, 93.96, 93.19),
        "fgvc_aircraft": (49.67, 40.31, 44.50),
        "sun397": (83.98, 81.32, 82.63),
        "dtd": (88.19, 72.38, 79.51),
        "eurosat": (97.60, 81.32, 88.72),
        "ucf101": (91.42, 82.36, 86.65),
    },
    "coop": {
        "average": (82.69, 63.22, 71.66),
        "imagenet": (76.47, 68.78, 71.92),
        "caltech101": (98.00, 89.81, 93.73),
        "oxford_pets": (93.67, 95.29, 94.47),
        "stanford_cars": (78.12, 60.40, 68.13),
        "oxford_flowers": (97.60, 59.67, 74.06),
        "food101": (88.33, 82.26, 85.19),
        "fgvc_aircraft": (40.44, 22.30, 28.75),
        "sun397": (80.60, 65.89, 72.51),
        "dtd": (79.44, 41.18, 54.24),
        "eurosat": (92.19, 54.74, 68.69),
        "ucf101": (84.69, 56.05, 67.46),
    },
}
# ANPrompt paper, Table I, row "CLIP (ICML22)": zero-shot CLIP with the hand-crafted templates, (base, novel, HM).
_ANPROMPT_TABLE_I_CLIP = {
    "average": (69.34, 74.22, 71.70),
    "imagenet": (72.43, 68.14, 70.22),
    "caltech101": (96.84, 94.00, 95.40),
    "oxford_pets": (91.17, 97.26, 94.12),
    "stanford_cars": (63.37, 74.89, 68.65),
    "oxford_flowers": (72.08, 77.80, 74.83),
    "food101": (90.10, 91.22, 90.66),
    "fgvc_aircraft": (27.19, 36.29, 31.09),
    "sun397": (69.36, 75.35, 72.23),
    "dtd": (53.24, 59.90, 56.37),
    "eurosat": (56.48, 64.05, 60.03),
    "ucf101": (70.53, 77.50, 73.85),
}
BASE2NOVEL = {
    method: {dataset: dict(zip(("base", "novel", "hm"), values)) for dataset, values in rows.items()}
    for method, rows in {**_TABLE_1, "zeroshot": _ANPROMPT_TABLE_I_CLIP}.items()
}

# ------------------------------------------------------------------------------------------------ cross-dataset
# CAPT paper, Table 2 ("cross-dataset transfer"): trained on ImageNet (source), accuracy on the 10 targets;
# "average" is the mean over the 10 targets (the source is not in it).
CROSS_DATASET = {
    "capt": {
        "imagenet": 72.69,
        "caltech101": 94.62,
        "oxford_pets": 92.53,
        "stanford_cars": 74.37,
        "oxford_flowers": 75.41,
        "food101": 88.75,
        "fgvc_aircraft": 27.23,
        "sun397": 69.43,
        "dtd": 57.21,
        "eurosat": 64.74,
        "ucf101": 75.19,
        "average": 71.95,
    },
    "coop": {
        "imagenet": 71.51,
        "caltech101": 93.70,
        "oxford_pets": 89.14,
        "stanford_cars": 64.51,
        "oxford_flowers": 68.71,
        "food101": 85.30,
        "fgvc_aircraft": 18.47,
        "sun397": 64.15,
        "dtd": 41.92,
        "eurosat": 46.39,
        "ucf101": 66.55,
        "average": 63.88,
    },
}

# ------------------------------------------------------------------------------------------------ domain generalisation
# CAPT paper, Table 3 ("cross-domain generalization with 16-shot"): ImageNet source and its four variants.
# The paper gives no average over the targets.
DOMAIN_GENERALIZATION = {
    "capt": {
        "imagenet": 72.69, "imagenetv2": 69.71, "imagenet_sketch": 50.46, "imagenet_a": 57.73, "imagenet_r": 83.61,
    },
    "coop": {
        "imagenet": 71.51, "imagenetv2": 64.20, "imagenet_sketch": 47.99, "imagenet_a": 49.71, "imagenet_r": 75.21,
    },
}

# ------------------------------------------------------------------------------------------------ few-shot
# CAPT paper, Table 4 ("few-shot learning setting with average accuracy"): the average over the 11 datasets only,
# per number of shots. (CAPT's 16-shot number is its Table 1 average base accuracy.)
FEW_SHOT = {
    "capt": {"average": {1: 73.11, 2: 75.83, 4: 78.69, 8: 81.91, 16: 87.41}},
    "coop": {"average": {1: 68.09, 2: 70.13, 4: 73.59, 8: 76.45, 16: 79.01}},
}

PAPER_TABLES = {
    "base2novel": BASE2NOVEL,
    "cross_dataset": CROSS_DATASET,
    "domain_generalization": DOMAIN_GENERALIZATION,
    "few_shot": FEW_SHOT,
}

#: Where each protocol's numbers come from, for the caption of the generated tables.
SOURCES = {
    "base2novel": "CAPT Table 1 (CAPT, CoOp); ANPrompt Table I (zero-shot CLIP)",
    "cross_dataset": "CAPT Table 2",
    "domain_generalization": "CAPT Table 3",
    "few_shot": "CAPT Table 4 (average over the 11 datasets only)",
}


def paper_value(protocol: str, method: str, dataset: str, column) -> float | None:
    """The published number of one table cell, or `None` where the papers give none.

    Args:
        protocol (`str`):
            `base2novel`, `cross_dataset`, `domain_generalization` or `few_shot`.
        method (`str`):
            `capt`, `coop` or `zeroshot`.
        dataset (`str`):
            A dataset registry key, or `average`.
        column:
            `base` / `novel` / `hm` for base-to-novel, `accuracy` for cross-dataset and domain generalisation, the
            number of shots (`int`) for few-shot.
    """
    if protocol not in PAPER_TABLES:
        raise ValueError(f"Unknown protocol {protocol!r}; known: {sorted(PAPER_TABLES)}")
    row = PAPER_TABLES[protocol].get(method, {}).get(dataset)
    if row is None:
        return None
    if isinstance(row, dict):
        return row.get(column)
    return row if column == "accuracy" else None


__all__ = [
    "BASE2NOVEL",
    "CROSS_DATASET",
    "DISPLAY_NAMES",
    "DOMAIN_GENERALIZATION",
    "FEW_SHOT",
    "METHOD_NAMES",
    "PAPER_TABLES",
    "SOURCES",
    "paper_value",
]
