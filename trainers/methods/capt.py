"""CAPT as a training method: its flags, the Confusion Bank and semantic prompts it prepares, and its training step.

The bank is `dataset_scripts/bank.py`, the mining and loss math `trainers/confusion.py` (pure torch), the model
`modeling_capt/modeling_capt.py`; this module wires them to the data, the flags and Accelerate.

Ablations (paper Tables 5-8) and how each flag is read here:

- `--use_sem`: confusion classes ranked by the score `S_i` (Eq. 7) with the pseudo-GT, and semantic prompts for the
  MGDE experts. Off: the confusion classes are the base model's most probable wrong classes (no statistics, true
  label), and the semantic experts start from the class-prompt features instead of generated prompts.
- `--use_sam`: representative confusing samples pass through the adapted encoder and enter the confusion InfoNCE;
  the adapter weight is the per-sample `alpha = s * c ** gamma`. Off: the paper places the Diff-Manner adapters in
  SAM, so the model has none (`CaptAdapterConfig.use_adapters=False`) and no extra images are used; the confusion loss
  is a cross-entropy of the sample over its own class and its confusion classes' texts. "SEM only" is then the
  semantic prompts and MGDE, as the paper's row; `--no_use_sam --no_use_mgde` would train nothing and is refused.
- `--use_mgde`: the MGDE layer on the pooled feature.
- `--confusion_rule exclude_label|paper` (Table 7's pseudo-GT rows use `exclude_label`, the default; `paper` is the
  literal ranking over every class but `g`), `--samples_per_class` (Figure 9), `--alpha_per_representative` (Eq. 13
  per representative) and `--bank_base_model` (Table 9) are documented at their fields.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dataset_scripts.bank import CaptConfusionBank, build_bank, check_bank_matches_training_set
from dataset_scripts.confusion_bank import load_bank_for_training, save_bank
from dataset_scripts.data import check_local_path, make_loader
from dataset_scripts.data_fingerprint import training_set_fingerprint
from modeling_capt import CaptAdapterConfig, CaptForImageClassification, load_pretrained
from trainers.flags import config_kwargs, flags_from_dataclasses
from trainers.confusion import (
    adapter_alpha,
    break_rate,
    confusion_infonce_loss,
    confusion_intensity,
    confusion_pairs,
    correction_rate,
    kmeans,
    representative_alpha,
    retrieve_representatives,
    select_confusion_classes,
)
from trainers.evaluation import predict
from trainers.methods.base import Method, RunContext
from trainers.semantic_prompts import (
    SemanticPromptFileError, get_prompt_generator, load_prompts, prompts_from_entries, save_prompts,
)


logger = logging.getLogger(__name__)

# Above this many bytes the processed training images are not kept in memory (they are re-read when retrieved).
PIXEL_CACHE_LIMIT_BYTES = 2 * 1024**3


#: `--confusion_rule`: this package's reading (own label excluded) or the paper's literal ranking.
CONFUSION_RULES = ("exclude_label", "paper")


@dataclass
class CaptTrainingConfig:
    """CAPT's training options: the bank, the miners, the losses and the semantic prompts (the model's own options,
    adapters and MGDE, are `CaptAdapterConfig`'s). Each is a flag of `--method capt`."""

    bank_path: str | None = field(default=None, metadata={"help": "Load a confusion bank (folder or Hub dataset id)."})
    bank_base_model: str | None = field(
        default=None, metadata={"help": "Checkpoint the bank is built from (default: zero-shot CLIP)."}
    )
    k_pairs: int = field(default=5, metadata={"help": "Confusion classes per sample."})
    use_sem: bool = field(default=True, metadata={"help": "Semantic Confusion Miner (scores + semantic prompts)."})
    use_sam: bool = field(default=True, metadata={"help": "Sample Confusion Miner (representative samples)."})
    confusion_statistics: bool = field(default=True, metadata={"help": "Weight scores by bank statistics (Eq. 7)."})
    symmetric_statistics: bool = field(default=False, metadata={"help": "n_i = M[i,g] + M[g,i]."})
    pseudo_gt: bool = field(default=True, metadata={"help": "Use the base model's prediction as GT for mining."})
    confusion_rule: str = field(
        default="exclude_label",
        metadata={"help": "exclude_label: the own label is never a confusion class (g first when misclassified); "
                          "paper: the top S_i over every class but g, own label included (duplicate InfoNCE targets "
                          "masked)."},
    )
    random_samples: bool = field(default=False, metadata={"help": "Random instead of representative samples."})
    samples_per_class: int = field(default=1, metadata={"help": "Representative samples per confusion class."})
    alpha_per_representative: bool = field(
        default=False,
        metadata={"help": "Each representative is adapted with its own s * c_i ** gamma (Eq. 13) instead of its "
                          "sample's s * mean(c) ** gamma."},
    )
    lambda_confuse: float = field(default=1.0, metadata={"help": "Weight of the confusion InfoNCE loss."})
    load_balance_coef: float = field(default=0.0, metadata={"help": "Weight of MGDE's load-balancing loss."})
    prompt_generator: str = field(
        default="template",
        metadata={"help": "template, json or lm. template reuses the prompts stored with a --bank_path bank; json and "
                          "lm write every pair's prompts anew."},
    )
    prompt_file: str | None = field(default=None, metadata={"help": "JSON prompts for --prompt_generator json."})
    prompt_lm: str | None = field(default=None, metadata={"help": "Causal LM for --prompt_generator lm."})

    def __post_init__(self):
        if self.prompt_generator not in ("template", "json", "lm"):
            raise ValueError(f"--prompt_generator must be template, json or lm, got {self.prompt_generator!r}")
        if self.prompt_generator == "json" and not self.prompt_file:
            raise ValueError("--prompt_generator json needs --prompt_file")
        if self.prompt_generator == "lm" and not self.prompt_lm:
            raise ValueError("--prompt_generator lm needs --prompt_lm (a local causal LM)")
        if self.k_pairs < 1:
            raise ValueError(f"--k_pairs must be at least 1, got {self.k_pairs}")
        if self.confusion_rule not in CONFUSION_RULES:
            raise ValueError(f"--confusion_rule must be one of {', '.join(CONFUSION_RULES)}, got {self.confusion_rule!r}")
        if self.samples_per_class < 1:
            raise ValueError(f"--samples_per_class must be at least 1, got {self.samples_per_class}")
        for flag in ("bank_path", "bank_base_model", "prompt_lm"):
            check_local_path(flag, getattr(self, flag))
        check_local_path("prompt_file", self.prompt_file, always_local=True)


#: The adapter options that are trainer flags (the others keep `CaptAdapterConfig`'s defaults).
ADAPTER_FLAGS = ("use_mgde", "adapter_branches", "layers_to_transform", "alpha_scale", "alpha_gamma",
                 "mgde_num_clusters", "mgde_top_k")

CaptArguments = flags_from_dataclasses(
    "CaptArguments", [(CaptTrainingConfig, None), (CaptAdapterConfig, ADAPTER_FLAGS)],
    doc="The flags of `--method capt`: `CaptTrainingConfig` and the adapter options of `CaptAdapterConfig`.",
)


def adapter_config_of(capt_args, mgde_num_clusters: int | None = None) -> CaptAdapterConfig:
    """The CAPT adapter config the flags ask for (MGDE's cluster count is known once the semantic prompts are)."""
    kwargs = config_kwargs(capt_args, CaptAdapterConfig)
    kwargs["use_adapters"] = bool(capt_args.use_sam)  # the paper's SAM holds the Diff-Manner adapters
    if mgde_num_clusters is not None:
        kwargs["mgde_num_clusters"] = mgde_num_clusters
    return CaptAdapterConfig(**kwargs)


@dataclass
class SemanticState:
    prompts: dict
    commonality_centres: torch.Tensor
    difference_centres: torch.Tensor

    @property
    def num_clusters(self) -> int:
        return int(self.commonality_centres.shape[0])


def _text_features(model, tokenizer, texts, batch_size=256) -> torch.Tensor:
    device = next(model.parameters()).device
    features = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(
                texts[start : start + batch_size], padding="max_length", truncation=True,
                max_length=model.config.text_length, return_tensors="pt",
            ).to(device)
            features.append(F.normalize(model.encode_text(encoded["input_ids"], encoded["attention_mask"]), dim=-1))
    return torch.cat(features).float().cpu()


def _prompts_to_data(prompts: dict) -> list[dict]:
    return [
        {"classes": list(pair), "commonality": p.commonality, "difference": p.difference, "source": p.source}
        for pair, p in prompts.items()
    ]


def _prompts_from_data(data, where: str = "the confusion bank's semantic prompts") -> dict:
    """The prompts stored with a bank, checked as a prompt file's `pairs` are (a malformed entry is an error, not a
    KeyError or an empty sentence embedded silently)."""
    if not data:
        return {}
    try:
        return prompts_from_entries(data, where)
    except SemanticPromptFileError as err:
        raise SemanticPromptFileError(
            f"{err} --prompt_generator template reuses the prompts stored with the bank (bank_metadata.json): fix or "
            "remove them, or let --prompt_generator json or lm write every pair's prompts."
        ) from None


#: Where the main process leaves the LM's prompts for the other processes of a multi-process run.
SHARED_LM_PROMPTS = "lm_semantic_prompts.json"


def generate_semantic_prompts(accelerator, capt_args, output_dir, pairs) -> dict:
    """The prompts of `pairs` from the run's `--prompt_generator`.

    A language model (`lm`) runs on the run's device, and in a multi-process run on the main process only: it writes
    the prompts to `OUTPUT_DIR/lm_semantic_prompts.json` (the prompt file format, atomically) and the other processes
    read them there. Every process loading its own copy of the LM (all onto the first GPU, the pipeline's default) and
    writing the same prompts again would cost memory and time for nothing.
    """
    def generate():
        extra = {"pipeline_kwargs": {"device": accelerator.device}} if capt_args.prompt_generator == "lm" else {}
        generator = get_prompt_generator(capt_args.prompt_generator, prompt_file=capt_args.prompt_file,
                                         prompt_lm=capt_args.prompt_lm, **extra)
        return generator.generate(pairs)

    if capt_args.prompt_generator != "lm" or accelerator.num_processes == 1:
        return generate()
    shared = os.path.join(output_dir, SHARED_LM_PROMPTS)
    if accelerator.is_main_process:
        save_prompts(generate(), shared)
    accelerator.wait_for_everyone()
    return load_prompts(shared)


def prepare_bank_and_prompts(accelerator, capt_args, train_args, zeroshot, train_rows, image_processor, tokenizer,
                             class_names, template, model_args, bank=None):
    """Build (or load) the Confusion Bank, mine the semantic confusion pairs and embed their prompts.

    `bank`: the `--bank_path` bank, already loaded and checked by `load_bank_for_training` (the trainer does so
    before the zero-shot evaluation); without it, `--bank_path` is loaded and checked here.

    Returns `(bank, SemanticState)`. The bank (with its prompts) is saved to `OUTPUT_DIR/confusion_bank`.
    """
    if bank is None and capt_args.bank_path:
        bank = load_bank_for_training(capt_args.bank_path, train_rows.dataset, class_names, template)
    elif bank is None:
        base_model, base_id = zeroshot, f"zero-shot {model_args.model_name_or_path}"
        if capt_args.bank_base_model:
            base_model = load_pretrained(capt_args.bank_base_model).to(accelerator.device)
            if base_model.config.class_names != list(class_names):
                raise ValueError(
                    f"--bank_base_model {capt_args.bank_base_model} classifies {base_model.config.class_names[:5]}..., "
                    f"not this run's classes {list(class_names)[:5]}..."
                )
            base_id = capt_args.bank_base_model
        fingerprint = training_set_fingerprint(train_rows.dataset)
        with accelerator.autocast():  # the run's precision, as every evaluation of the run
            bank = build_bank(base_model, train_rows, image_processor, train_args.per_device_eval_batch_size,
                              class_names, template, base_id, data_fingerprint=fingerprint)
        check_bank_matches_training_set(bank, train_rows.dataset["label"], class_names)
    if bank.num_misclassified == 0:
        logger.warning("The base model misclassifies no training sample: SAM falls back to each class's samples")
    k = min(capt_args.k_pairs, len(class_names) - 1)
    if k < capt_args.k_pairs:
        logger.warning("k_pairs=%d is more than the %d other classes: using %d", capt_args.k_pairs, len(class_names) - 1, k)
    if k < 1:
        raise ValueError("CAPT needs at least two training classes")

    prompts = {}
    if capt_args.use_sem:
        # Prompts stored with a loaded bank are reused, unless the run asks for a generator of its own
        # (--prompt_generator json or lm): then that generator answers every pair, as the flags say.
        if capt_args.prompt_generator == "template":
            stored = f"{capt_args.bank_path or 'the confusion bank'} (stored semantic prompts)"
            prompts = _prompts_from_data(bank.semantic_prompts, stored)
        elif bank.semantic_prompts:
            logger.info("--prompt_generator %s: the semantic prompts stored with the bank are not used",
                        capt_args.prompt_generator)
        pairs = confusion_pairs(bank, k, pseudo_gt=capt_args.pseudo_gt, use_statistics=capt_args.confusion_statistics,
                                symmetric=capt_args.symmetric_statistics,
                                exclude_label=capt_args.confusion_rule == "exclude_label")
        named = [(class_names[a], class_names[b]) for a, b in pairs]
        missing = [pair for pair in named if pair not in prompts]
        if missing:
            prompts.update(generate_semantic_prompts(accelerator, capt_args, train_args.output_dir, missing))
        prompts = {pair: prompts[pair] for pair in named}
        commonality = _text_features(zeroshot, tokenizer, [p.commonality for p in prompts.values()])
        difference = _text_features(zeroshot, tokenizer, [p.difference for p in prompts.values()])
        bank.semantic_prompts = _prompts_to_data(prompts)
    else:  # no semantic prompts: the semantic experts start from the class prompts; the bank keeps what it stores
        commonality = difference = F.normalize(zeroshot.get_class_text_features().detach().float().cpu(), dim=-1)
    clusters = max(1, min(capt_args.mgde_num_clusters, commonality.shape[0], difference.shape[0]))
    state = SemanticState(
        prompts=prompts,
        commonality_centres=kmeans(commonality, clusters, seed=train_args.seed),
        difference_centres=kmeans(difference, clusters, seed=train_args.seed),
    )
    if accelerator.is_main_process:
        save_bank(bank, os.path.join(train_args.output_dir, "confusion_bank"))
    logger.info(
        "confusion bank: %d samples, %d misclassified; %d semantic pairs; %d clusters per semantic expert",
        len(bank), bank.num_misclassified, len(prompts), clusters,
    )
    return bank, state


class CaptStep:
    """One CAPT training step: mine confusion classes, retrieve representatives, forward, and the losses.

    The representatives go through the model in the same forward as their sample, so each is encoded with its
    sample's `alpha_j` (the weight of the confusion they stand for) and, like the batch, with MGDE in training mode
    (router noise, expert dropout). METHODS.md leaves both open.
    """

    def __init__(self, model, bank: CaptConfusionBank, capt_args, train_rows, image_processor, accelerator, seed=0,
                 prefix_cache=None):
        self.model = model
        self.bank = bank
        self.args = capt_args
        self.train_rows = train_rows
        self.image_processor = image_processor
        self.accelerator = accelerator
        self.k = min(capt_args.k_pairs, bank.num_classes - 1)
        self.generator = torch.Generator().manual_seed(seed)
        self.prefix_cache = prefix_cache  # a `FrozenPrefixCache`: batches then carry no pixels
        self.pixel_cache = None
        if prefix_cache is None:
            first = train_rows.pixel_values([0], image_processor)
            if first.numel() * first.element_size() * len(train_rows) <= PIXEL_CACHE_LIMIT_BYTES:
                self.pixel_cache = train_rows.pixel_values(range(len(train_rows)), image_processor)

    def _pixels(self, dataset_indices: torch.Tensor) -> torch.Tensor:
        if self.pixel_cache is not None:
            return self.pixel_cache[dataset_indices.cpu()]
        return self.train_rows.pixel_values(dataset_indices.tolist(), self.image_processor)

    def _image_inputs(self, batch, extra_indices: torch.Tensor | None = None) -> dict:
        """Model inputs for the batch's images followed by the training rows `extra_indices` (representatives):
        their pixels, or their cached frozen-prefix hidden states."""
        device = batch["labels"].device
        if self.prefix_cache is not None:
            indices = batch["indices"] if extra_indices is None else torch.cat([batch["indices"], extra_indices.to(device)])
            return self.prefix_cache.model_inputs(indices, device)
        pixel_values = batch["pixel_values"]
        if extra_indices is not None:
            extra = self._pixels(extra_indices).to(pixel_values.device, pixel_values.dtype)
            pixel_values = torch.cat([pixel_values, extra])
        return {"pixel_values": pixel_values}

    def __call__(self, batch) -> tuple[torch.Tensor, dict]:
        args, bank = self.args, self.bank
        labels = batch["labels"]
        unwrapped = self.accelerator.unwrap_model(self.model)
        bank = bank.to(labels.device)
        rows = bank.rows_for(batch["indices"])
        probs = bank.probs[rows]
        if args.use_sem:
            classes = select_confusion_classes(probs, bank.confusion_matrix, labels, self.k, pseudo_gt=args.pseudo_gt,
                                               use_statistics=args.confusion_statistics,
                                               symmetric=args.symmetric_statistics,
                                               exclude_label=args.confusion_rule == "exclude_label")
        else:
            classes = select_confusion_classes(probs, bank.confusion_matrix, labels, self.k, pseudo_gt=False,
                                               use_statistics=False)
        # Read in the prepared forward's precision (autocast), so the model's text cache, keyed by it, serves both
        # this read and the forward; the losses below take it in float32, as the forward's outputs.
        with self.accelerator.autocast():
            text = unwrapped.get_class_text_features().float()
        logit_scale = unwrapped.clip.logit_scale.exp()
        batch_size = labels.shape[0]
        logs = {}
        if args.use_sam:
            per_class = args.samples_per_class
            reps, cosine = retrieve_representatives(bank.embeds[rows], classes, bank,
                                                    random_samples=args.random_samples, generator=self.generator,
                                                    samples_per_class=per_class)
            intensity = confusion_intensity(cosine)
            alpha = adapter_alpha(intensity, s=args.alpha_scale, gamma=args.alpha_gamma)
            if args.alpha_per_representative:
                rep_alpha = representative_alpha(intensity, s=args.alpha_scale, gamma=args.alpha_gamma).flatten()
            else:
                rep_alpha = alpha.repeat_interleave(reps.shape[1])
            out = self.model(**self._image_inputs(batch, bank.indices[reps.flatten()]),
                             alpha=torch.cat([alpha, rep_alpha]))
            image = out.image_embeds
            image_feats = torch.cat([image[:batch_size, None], image[batch_size:].view(batch_size, reps.shape[1], -1)],
                                    dim=1)
            group = torch.cat([labels[:, None], classes.repeat_interleave(per_class, dim=1)], dim=1)
            # a class repeated in the group (own label under the paper's rule, several samples per class) is masked
            duplicates = per_class > 1 or args.confusion_rule != "exclude_label"
            confuse = confusion_infonce_loss(image_feats, text[group], logit_scale, classes=group if duplicates else None)
            logs["train/alpha"] = float(alpha.mean())
        else:
            alpha = torch.full((batch_size,), float(args.alpha_scale), device=labels.device)
            out = self.model(**self._image_inputs(batch), alpha=alpha)
            candidates = torch.cat([labels[:, None], classes], dim=1)
            hard_logits = logit_scale * torch.einsum("bp,bkp->bk", out.image_embeds[:batch_size], text[candidates])
            confuse = F.cross_entropy(hard_logits, torch.zeros_like(labels))
        logits = out.logits[:batch_size]
        ce = F.cross_entropy(logits, labels)
        loss = ce + args.lambda_confuse * confuse
        if args.load_balance_coef and out.aux_loss is not None:
            loss = loss + args.load_balance_coef * out.aux_loss
        if unwrapped.training:
            # every process folds in every process's alphas, so the saved running mean covers all samples
            unwrapped.update_running_alpha(self.accelerator.gather_for_metrics(alpha.detach(), use_gather_object=False)
                                           if self.accelerator.num_processes > 1 else alpha.detach())
        logs.update({"train/ce": ce.item(), "train/confuse": confuse.item()})
        return loss, logs


def _aligned(pred_a: dict, pred_b: dict):
    order_a, order_b = torch.argsort(pred_a["indices"]), torch.argsort(pred_b["indices"])
    if not torch.equal(pred_a["indices"][order_a], pred_b["indices"][order_b]):
        raise RuntimeError("The two evaluations saw different samples")
    return pred_a["preds"][order_a], pred_b["preds"][order_b], pred_a["labels"][order_a]


def _percent(value: float) -> float | None:
    return None if value is None or math.isnan(value) else 100.0 * value


def correction_metrics(model, bank, train_rows, image_processor, accelerator, zs_pred, tr_pred, zs_novel, tr_novel,
                       batch_size) -> dict:
    """Correction rate on the bank's misclassified training samples, and test correction / break rates (in %).

    METHODS.md §8 measures the test-split rates against "the base model". Here that is always the run's zero-shot
    CLIP, also when the bank came from another model (`--bank_base_model`, or a `--bank_path` bank): the run evaluates
    zero-shot CLIP on the test split anyway, a loaded bank names its base model but does not carry it, and the rates
    then say what training changed relative to the frozen CLIP every run starts from. The bank correction rate uses
    the bank's own predictions, so it is measured against the bank's base model, whichever it was.
    """
    loader = accelerator.prepare(make_loader(train_rows.dataset, image_processor, batch_size, False, 0, "train"))
    train_pred = predict(model, loader, accelerator, "correction rate")  # each process predicts its shard
    rows = bank.rows_for(train_pred["indices"]).cpu()
    bank_preds, bank_labels = bank.preds.cpu()[rows], bank.labels.cpu()[rows]
    result = {
        "correction_rate": _percent(correction_rate(bank_preds, train_pred["preds"], bank_labels)),
        "correction_rate_counts": _correction_counts(bank_preds, train_pred["preds"], bank_labels),
        "bank_misclassified": int(bank.num_misclassified),
    }
    base, new, labels = _aligned(zs_pred, tr_pred)
    result["test_correction_rate"] = _percent(correction_rate(base, new, labels))
    result["test_correction_rate_counts"] = _correction_counts(base, new, labels)
    result["test_break_rate"] = _percent(break_rate(base, new, labels))
    result["test_break_rate_counts"] = _break_counts(base, new, labels)
    if zs_novel is not None and tr_novel is not None:
        base, new, labels = _aligned(zs_novel, tr_novel)
        result["novel_test_correction_rate"] = _percent(correction_rate(base, new, labels))
        result["novel_test_correction_rate_counts"] = _correction_counts(base, new, labels)
        result["novel_test_break_rate"] = _percent(break_rate(base, new, labels))
        result["novel_test_break_rate_counts"] = _break_counts(base, new, labels)
    return result


def _correction_counts(base, new, labels) -> list[int]:
    """`[corrected, wrong before]`: the correction rate's numerator and denominator."""
    wrong = base != labels
    return [int((new[wrong] == labels[wrong]).sum()), int(wrong.sum())]


def _break_counts(base, new, labels) -> list[int]:
    """`[broken, right before]`: the break rate's numerator and denominator."""
    right = base == labels
    return [int((new[right] != labels[right]).sum()), int(right.sum())]


def _capt_parts(folder: str) -> str:
    """What a CAPT model in `folder` (its `config.json`) trains besides its adapters: their branches and MGDE."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            adapter = json.load(handle).get("adapter_config") or {}
    except (OSError, ValueError):
        return " and the MGDE layer"
    if not adapter.get("use_adapters", True):
        return " are not used (no SAM); the MGDE layer is trained"
    branches = {"global": " (global branch only)", "local": " (local branch only)"}
    branches = branches.get(adapter.get("adapter_branches"), "")
    return branches + (" and the MGDE layer" if adapter.get("use_mgde", True) else " (no MGDE layer)")


class CaptMethod(Method):
    """CAPT: Diff-Manner adapters and MGDE trained from a Confusion Bank of the base model's own mistakes."""

    name = "capt"
    title = "CAPT"
    Arguments = CaptArguments
    needs_every_training_class = True  # its Confusion Bank and representative samples need every class
    printed_metrics = ("correction_rate", "test_correction_rate", "test_break_rate")

    def check(self, model_args) -> None:
        from transformers import CLIPConfig

        if not self.args.use_sam and not self.args.use_mgde:
            raise ValueError("--no_use_sam removes the Diff-Manner adapters and --no_use_mgde the MGDE layer: CAPT would "
                             "train nothing. Keep one of them.")
        num_layers = CLIPConfig.from_pretrained(model_args.model_name_or_path).vision_config.num_hidden_layers
        adapter_config_of(self.args).select_layers(num_layers)

    def before_evaluation(self, run: RunContext) -> None:
        if self.args.bank_path:
            # a bank of other data (other labels, or other images: another --seed's few-shot draw) fails here, before
            # any model is loaded or evaluated
            run.state["bank"] = load_bank_for_training(self.args.bank_path, run.splits["train"], run.train_names,
                                                       run.template)

    def prepare(self, run: RunContext) -> None:
        run.state["bank"], run.state["semantic"] = prepare_bank_and_prompts(
            run.accelerator, self.args, run.train_args, run.zeroshot, run.train_rows, run.image_processor,
            run.tokenizer, run.train_names, run.template, run.model_args, bank=run.state.get("bank"),
        )

    def build_model(self, run: RunContext):
        semantic = run.state["semantic"]
        clusters = semantic.num_clusters if self.args.use_mgde else self.args.mgde_num_clusters
        model = run.build(CaptForImageClassification, adapter_config=adapter_config_of(self.args, clusters))
        if model.mgde is not None:
            model.init_semantic_experts(semantic.commonality_centres, semantic.difference_centres)
        return model

    def begin_training(self, model, run: RunContext, prefix_cache=None) -> None:
        super().begin_training(model, run, prefix_cache)
        self.step = CaptStep(model, run.state["bank"], self.args, run.train_rows, run.image_processor,
                             run.accelerator, seed=run.train_args.seed, prefix_cache=prefix_cache)

    def training_step(self, batch):
        return self.step(batch)

    def generators(self) -> dict:
        return {"capt_step": self.step.generator}

    def extra_metrics(self, model, run: RunContext, results: dict) -> dict:
        zs, tr = results["zeroshot"], results[self.name]
        return correction_metrics(
            model, run.state["bank"], run.train_rows, run.image_processor, run.accelerator, zs["base_predictions"],
            tr["base_predictions"], zs.get("novel_predictions"), tr.get("novel_predictions"),
            run.train_args.per_device_eval_batch_size,
        )

    @classmethod
    def trained_parts(cls, model_folder: str) -> str:
        parts = _capt_parts(model_folder)
        if parts.startswith(" are not used"):
            return f"The Diff-Manner adapters{parts} (CAPT), from a Confusion Bank of the base model's own mistakes."
        return (f"The Diff-Manner adapters{parts} are trained (CAPT), from a Confusion Bank of "
                "the base model's own mistakes.")
