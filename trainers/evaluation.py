"""Evaluation of a classifier on the run's test splits, gathered across processes, and the printed summary."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from trainers.metrics import classification_metrics, harmonic_mean, top_confused_pairs


@torch.inference_mode()
def predict(model, loader, accelerator, desc: str) -> dict:
    """Predictions, labels, row indices and normalised image embeddings over a loader, gathered without duplicates.

    Runs under the run's mixed precision (`accelerator.autocast`), so the zero-shot model (never `prepare`d) and
    the trained one are evaluated in the same precision."""
    model = accelerator.unwrap_model(model)  # evaluation needs no DDP wrapper (and may change the class list)
    model.eval()
    outputs = {"preds": [], "labels": [], "indices": [], "probs": [], "embeds": []}
    for batch in tqdm(loader, desc=desc, disable=not accelerator.is_local_main_process, leave=False):
        with accelerator.autocast():
            out = model(pixel_values=batch["pixel_values"])
        gathered = accelerator.gather_for_metrics(
            (out.logits.argmax(-1), batch["labels"], batch["indices"], out.logits.float().softmax(-1), out.image_embeds.float())
        )
        for key, value in zip(outputs, gathered):
            outputs[key].append(value.cpu())
    return {key: torch.cat(values) for key, values in outputs.items()}


def evaluate_split(model, loader, accelerator, class_names, desc) -> tuple[dict, dict]:
    result = predict(model, loader, accelerator, desc)
    metrics = classification_metrics(result["labels"], result["preds"], class_names)
    return metrics, result


def evaluate_base_and_novel(model, loaders, splits, tokenizer, accelerator, name) -> dict:
    """Metrics and predictions of `model` on the test split of the training classes and, when the run has one, on
    the novel classes' test split (the class list is switched for it, then restored)."""
    train_names = splits["train_names"]
    result = {}
    result["base"], result["base_predictions"] = evaluate_split(
        model, loaders["test"], accelerator, train_names, f"{name} test")
    if "test_novel" in loaders:
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.set_class_names(splits["novel_names"], tokenizer)
        result["novel"], result["novel_predictions"] = evaluate_split(
            model, loaders["test_novel"], accelerator, splits["novel_names"], f"{name} novel")
        unwrapped.set_class_names(train_names, tokenizer)
    return result


def summarize_results(result: dict, class_names, novel_names=None) -> dict:
    """The `metrics.json` entry of one model: accuracy (base, novel, HM), per-class accuracy, confusion matrices, and
    the top confused pairs of the base (and, given `novel_names`, the novel) classes."""
    base = result["base"]
    entry = {"accuracy": base["accuracy"]}
    if "novel" in result:
        novel = result["novel"]["accuracy"]
        entry.update(base_accuracy=base["accuracy"], novel_accuracy=novel, hm=harmonic_mean(base["accuracy"], novel))
    entry["top_confused_pairs"] = top_confused_pairs(base["confusion_matrix"], class_names)
    entry["per_class_accuracy"] = base["per_class_accuracy"]
    entry["confusion_matrix"] = base["confusion_matrix"]
    if "novel" in result:
        entry["novel_confusion_matrix"] = result["novel"]["confusion_matrix"]
        if novel_names is not None:
            entry["novel_top_confused_pairs"] = top_confused_pairs(result["novel"]["confusion_matrix"], novel_names)
    return entry


def format_rate(value, counts=None) -> str:
    """A rate in % with its numerator and denominator when known: `64.71 % (11/17)`."""
    if value is None:
        return "n/a" + (f" ({counts[0]}/{counts[1]})" if counts else "")
    return f"{value:.2f} %" + (f" ({counts[0]}/{counts[1]})" if counts else "")


def print_table(summary: dict, method: str, printed_metrics=()) -> None:
    """The accuracy table of the zero-shot and the trained model, the method's `printed_metrics`, top confusions."""
    rows = [("zero-shot", summary["zeroshot"])]
    if method != "zeroshot":
        rows.append((method, summary[method]))
    novel = "novel_accuracy" in summary["zeroshot"]
    header = f"{'model':<10} {'base':>7} {'novel':>7} {'HM':>7}" if novel else f"{'model':<10} {'accuracy':>8}"
    print(f"\n{summary['dataset']} | {summary['shots']} shots | seed {summary['seed']}")
    print(header)
    for name, entry in rows:
        if novel:
            print(f"{name:<10} {entry['base_accuracy']:>7.2f} {entry['novel_accuracy']:>7.2f} {entry['hm']:>7.2f}")
        else:
            print(f"{name:<10} {entry['accuracy']:>8.2f}")
    for key in printed_metrics:  # a rate with `<key>_counts` prints its numerator / denominator beside it
        print(f"{key}: {format_rate(summary[method].get(key), summary[method].get(f'{key}_counts'))}")
    for pairs_key, classes in (("top_confused_pairs", ""), ("novel_top_confused_pairs", " (novel classes)")):
        for name, entry in rows:
            if pairs_key in entry:
                pairs = ", ".join(f"{p['true']}->{p['predicted']} ({p['count']})" for p in entry[pairs_key][:3])
                print(f"top confusions{classes}, {name}: {pairs}")
