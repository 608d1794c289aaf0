"""Published numbers that `trainers/run_protocol.py` compares its tables with (CLIP ViT-B/16, mean of 3 seeds).

Transcribed from two papers, for the rows this project can run:

- the CAPT paper (`shared/seeds/001_f208b4d011f549e1.txt`), Tables 1-4: CAPT and CoOp;
- the ANPrompt paper (`shared/seeds/003_1bef8ddbdb0cce5d.txt`), Tables I-III: ANPrompt, zero-shot CLIP (the CAPT
  paper lists none; `PROTOCOL.md` names ANPrompt's Table I as the source of its base-to-novel numbers) and CoOp.

[`PAPERS`] holds each paper's tables as printed; [`PAPER_TABLES`] the rows a run of each method is compared with
([`COMPARED_WITH`]: CAPT's paper for CAPT and CoOp, ANPrompt's for ANPrompt and zero-shot CLIP).

Numbers are copied as printed, typos included (a test re-derives what can be re-derived, and the known
inconsistencies are listed beside each table). Keys are the dataset registry keys of
`dataset_scripts.coop_datasets`, plus `"average"` for the papers' average column or row. Methods are keyed like
the trainer's `--method`: `"capt"`, `"coop"`, `"zeroshot"`, `"anprompt"`.

Example:

```python
>>> from trainers.paper_results import paper_value
>>> paper_value("base2novel", "capt", "dtd", "hm")
79.51
>>> paper_value("few_shot", "coop", "average", 4)
73.59
>>> paper_value("domain_generalization", "anprompt", "average", "accuracy")
60.4
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
METHOD_NAMES = {"capt": "CAPT", "coop": "CoOp", "zeroshot": "zero-shot CLIP", "anprompt": "ANPrompt"}

# ================================================================================================ CAPT paper
# Table 1 ("Comparison with other methods on base-to-new generalization with 16-shot"): (base, novel, HM).
# Averages are the mean over the 11 datasets, HM of the average base and novel (as in CoCoOp). Inconsistencies as
# printed: CoOp ImageNet novel 68.78 (its HM 71.92 and the novel average fit 67.88, CoOp's published value); CAPT's
# Average novel 80.90 and HM 83.90 fit neither its per-dataset rows (mean novel 80.73, HM of averages 84.03).
_CAPT_TABLE_1 = {
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
# Table 2 ("cross-dataset transfer"): trained on ImageNet (source), accuracy on the 10 targets; "average" is the mean
# over the 10 targets (the source is not in it).
_CAPT_TABLE_2 = {
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
# Table 3 ("cross-domain generalization with 16-shot"): ImageNet source and its four variants. The paper gives no
# average over the targets.
_CAPT_TABLE_3 = {
    "capt": {
        "imagenet": 72.69, "imagenetv2": 69.71, "imagenet_sketch": 50.46, "imagenet_a": 57.73, "imagenet_r": 83.61,
    },
    "coop": {
        "imagenet": 71.51, "imagenetv2": 64.20, "imagenet_sketch": 47.99, "imagenet_a": 49.71, "imagenet_r": 75.21,
    },
}
# Table 4 ("few-shot learning setting with average accuracy"): the average over the 11 datasets only, per number of
# shots. (CAPT's 16-shot number is its Table 1 average base accuracy.)
_CAPT_TABLE_4 = {
    "capt": {"average": {1: 73.11, 2: 75.83, 4: 78.69, 8: 81.91, 16: 87.41}},
    "coop": {"average": {1: 68.09, 2: 70.13, 4: 73.59, 8: 76.45, 16: 79.01}},
}

# ================================================================================================ ANPrompt paper
# Table I ("Comparison with state-of-the-art methods on base-to-novel generalization"): (base, novel, HM), rows
# "ANPrompt", "CLIP (ICML22)" (zero-shot CLIP with the hand-crafted templates) and "CoOp (IJCV22)"; the other eight
# methods are not run here. Average as in CAPT's Table 1. Inconsistencies as printed: ANPrompt EuroSAT HM 91.21
# (95.53 and 87.33 give 91.25); CoOp Caltech101 HM 94.20 (98.00 and 89.81 give 93.73, CAPT's Table 1 value). CoOp's
# ImageNet novel is 67.88 here (68.78 in CAPT's Table 1).
_ANPROMPT_TABLE_I = {
    "anprompt": {
        "average": (86.15, 77.70, 81.70),
        "imagenet": (77.83, 71.17, 74.35),
        "caltech101": (98.97, 94.73, 96.80),
        "oxford_pets": (95.73, 97.17, 96.44),
        "stanford_cars": (83.57, 74.63, 78.85),
        "oxford_flowers": (98.60, 77.30, 86.66),
        "food101": (90.63, 91.50, 91.06),
        "fgvc_aircraft": (49.67, 36.60, 42.14),
        "sun397": (83.07, 79.07, 81.02),
        "dtd": (85.20, 65.10, 73.80),
        "eurosat": (95.53, 87.33, 91.21),
        "ucf101": (88.80, 80.07, 84.21),
    },
    "zeroshot": {
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
    },
    # the same as CAPT's Table 1 but for these two cells
    "coop": {**_CAPT_TABLE_1["coop"], "imagenet": (76.47, 67.88, 71.92), "caltech101": (98.00, 89.81, 94.20)},
}
# Table II ("Results from cross-dataset evaluation"): trained on ImageNet, rows "ANPrompt" and "CoOp" (no CLIP row);
# "average" is the mean over the 10 targets. CoOp's DTD is 41.90 here (41.92 in CAPT's Table 2).
_ANPROMPT_TABLE_II = {
    "anprompt": {
        "imagenet": 71.13,
        "caltech101": 94.70,
        "oxford_pets": 91.00,
        "stanford_cars": 66.00,
        "oxford_flowers": 72.87,
        "food101": 86.23,
        "fgvc_aircraft": 26.10,
        "sun397": 67.47,
        "dtd": 45.83,
        "eurosat": 51.97,
        "ucf101": 69.27,
        "average": 67.14,
    },
    "coop": {**_CAPT_TABLE_2["coop"], "dtd": 41.90},  # the same as CAPT's Table 2 but for this cell
}
# Table III ("Results on domain generalization task"): ImageNet source and its four variants, rows "ANPrompt",
# "CLIP" and "CoOp"; "average" is the mean over the four targets (the source is not in it).
_ANPROMPT_TABLE_III = {
    "anprompt": {
        "imagenet": 71.13, "imagenetv2": 64.63, "imagenet_sketch": 49.13, "imagenet_a": 50.37, "imagenet_r": 77.47,
        "average": 60.40,
    },
    "zeroshot": {
        "imagenet": 66.73, "imagenetv2": 60.83, "imagenet_sketch": 46.15, "imagenet_a": 47.77, "imagenet_r": 73.96,
        "average": 57.18,
    },
    "coop": {**_CAPT_TABLE_3["coop"], "average": 59.28},  # CAPT's Table 3 row, and the average
}


def _base2novel(table: dict) -> dict:
    return {method: {dataset: dict(zip(("base", "novel", "hm"), values)) for dataset, values in rows.items()}
            for method, rows in table.items()}


#: Each paper's tables as printed: `PAPERS[paper][protocol][method][dataset]` (a base-to-novel cell is a dict of
#: `base` / `novel` / `hm`, a few-shot cell a dict keyed by the number of shots, the others a number).
PAPERS = {
    "capt": {
        "base2novel": _base2novel(_CAPT_TABLE_1),
        "cross_dataset": _CAPT_TABLE_2,
        "domain_generalization": _CAPT_TABLE_3,
        "few_shot": _CAPT_TABLE_4,
    },
    "anprompt": {
        "base2novel": _base2novel(_ANPROMPT_TABLE_I),
        "cross_dataset": _ANPROMPT_TABLE_II,
        "domain_generalization": _ANPROMPT_TABLE_III,
    },
}
#: The paper whose rows a run of each method is compared with.
COMPARED_WITH = {"capt": "capt", "coop": "capt", "zeroshot": "anprompt", "anprompt": "anprompt"}

#: `PAPER_TABLES[protocol][method]`: the rows a run of `method` is compared with (from its [`COMPARED_WITH`] paper).
PAPER_TABLES = {
    protocol: {
        method: PAPERS[paper][protocol][method]
        for method, paper in COMPARED_WITH.items()
        if method in PAPERS[paper].get(protocol, {})
    }
    for protocol in ("base2novel", "cross_dataset", "domain_generalization", "few_shot")
}
BASE2NOVEL = PAPER_TABLES["base2novel"]
CROSS_DATASET = PAPER_TABLES["cross_dataset"]
DOMAIN_GENERALIZATION = PAPER_TABLES["domain_generalization"]
FEW_SHOT = PAPER_TABLES["few_shot"]

#: Where each protocol's numbers come from, for the caption of the generated tables.
SOURCES = {
    "base2novel": "CAPT Table 1 (CAPT, CoOp); ANPrompt Table I (ANPrompt, zero-shot CLIP)",
    "cross_dataset": "CAPT Table 2 (CAPT, CoOp); ANPrompt Table II (ANPrompt)",
    "domain_generalization": "CAPT Table 3 (CAPT, CoOp); ANPrompt Table III (ANPrompt, zero-shot CLIP)",
    "few_shot": "CAPT Table 4 (average over the 11 datasets only)",
}


def paper_value(protocol: str, method: str, dataset: str, column) -> float | None:
    """The published number of one table cell, or `None` where the papers give none.

    Args:
        protocol (`str`):
            `base2novel`, `cross_dataset`, `domain_generalization` or `few_shot`.
        method (`str`):
            `capt`, `coop`, `zeroshot` or `anprompt`.
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
    "COMPARED_WITH",
    "CROSS_DATASET",
    "DISPLAY_NAMES",
    "DOMAIN_GENERALIZATION",
    "FEW_SHOT",
    "METHOD_NAMES",
    "PAPERS",
    "PAPER_TABLES",
    "SOURCES",
    "paper_value",
]
