"""VisPrompt as a training method: image-guided prompts trained under label noise with NLPrompt's OT purification.

Each epoch starts with an OT pass (`begin_epoch`): the model, in eval mode, scores every training image (eval
transform); entropic OT over those probabilities gives each sample an OT label (`trainers/noisy_labels.py`); a sample
whose given label equals it is clean, the rest noisy. The steps then train clean samples with cross-entropy on the
given label and noisy ones with a robust loss (GCE, q = 0.5, by default). Logged per epoch: the clean set's precision
and recall against the true labels (kept by the label-noise protocol, `dataset_scripts/label_noise.py`) and the mean
gate on clean vs noisy samples.

Readings that depart from `METHODS.md`, and why:

- `combine="sequential"` (default): the paper makes a pass over the clean samples, then one over the noisy ones. The
  shared loop draws mixed batches, so here each batch's loss is the mean clean loss over its clean rows plus the mean
  noisy loss over its noisy rows (each group normalised on its own, as in its own pass; the two updates are applied
  together). `weighted`: one mean of the per-row losses over the batch.
- `ot_scope="batch"` solves the OT on each training batch's (detached) probabilities instead of the whole set.
- `use_ot=False` (the "without OT" ablation) treats every sample as clean, and `clean_loss` lets the clean loss be
  robust too: CoOp + GCE is `--image_guidance false --use_ot false --clean_loss gce`.
- With `image_guidance=False` and `noisy_loss="mae"` the method is NLPrompt.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from modeling_capt import VisPromptContextConfig, VisPromptForImageClassification, VisPromptGuidanceConfig
from trainers.flags import config_kwargs, flags_from_dataclasses
from trainers.methods.base import Method, RunContext
from trainers.noisy_labels import clean_set_metrics, curriculum_keep, ot_assignments, per_sample_loss


logger = logging.getLogger(__name__)

LOSSES = ("ce", "gce", "mae")


@dataclass
class VisPromptTrainingConfig:
    """VisPrompt's training options: the OT purification, the losses and the curriculum.

    Args:
        use_ot (`bool`, *optional*, defaults to `True`): split clean / noisy by OT each epoch (False: all clean).
        ot_scope (`str`, *optional*, defaults to `"dataset"`): OT over the whole training set, or per `batch`.
        ot_reg (`float`, *optional*, defaults to 0.01): entropic regularisation.
        ot_max_iter (`int`, *optional*, defaults to 1000): Sinkhorn iterations at most.
        ot_tol (`float`, *optional*, defaults to 1e-6): Sinkhorn stopping threshold.
        clean_loss (`str`, *optional*, defaults to `"ce"`): loss on clean samples (ce, gce, mae).
        noisy_loss (`str`, *optional*, defaults to `"gce"`): loss on noisy samples (ce, gce, mae).
        gce_q (`float`, *optional*, defaults to 0.5): `q` of the generalised cross-entropy.
        combine (`str`, *optional*, defaults to `"sequential"`): per-group means (sequential) or one batch mean.
        curriculum (`bool`, *optional*, defaults to `False`): keep only the most OT-confident rows, budget rising.
        curriculum_start (`float`, *optional*, defaults to 0.3): the first epoch's budget (share of rows).
        curriculum_epochs (`int`, *optional*, defaults to 5): epochs for the budget to reach 1.
    """

    use_ot: bool = field(default=True, metadata={"help": "Split clean/noisy by OT each epoch (False: all clean)."})
    ot_scope: str = field(default="dataset", metadata={"help": "OT over the whole training set (dataset) or batch."})
    ot_reg: float = field(default=0.01, metadata={"help": "Entropic regularisation of the OT."})
    ot_max_iter: int = field(default=1000, metadata={"help": "Sinkhorn iterations at most."})
    ot_tol: float = field(default=1e-6, metadata={"help": "Sinkhorn stopping threshold."})
    clean_loss: str = field(default="ce", metadata={"help": "Loss on clean samples: ce, gce or mae."})
    noisy_loss: str = field(default="gce", metadata={"help": "Loss on noisy samples: gce, mae or ce."})
    gce_q: float = field(default=0.5, metadata={"help": "q of the generalised cross-entropy."})
    combine: str = field(default="sequential", metadata={"help": "sequential (per-group means) or weighted."})
    curriculum: bool = field(default=False, metadata={"help": "Keep the top budget x N rows by OT confidence."})
    curriculum_start: float = field(default=0.3, metadata={"help": "The first epoch's budget."})
    curriculum_epochs: int = field(default=5, metadata={"help": "Epochs for the budget to rise to 1."})

    def __post_init__(self):
        if self.ot_scope not in ("dataset", "batch"):
            raise ValueError(f"ot_scope must be dataset or batch, got {self.ot_scope!r}")
        for name in ("clean_loss", "noisy_loss"):
            if getattr(self, name) not in LOSSES:
                raise ValueError(f"{name} must be one of {LOSSES}, got {getattr(self, name)!r}")
        if self.combine not in ("sequential", "weighted"):
            raise ValueError(f"combine must be sequential or weighted, got {self.combine!r}")
        if not self.ot_reg > 0 or not self.ot_tol > 0 or self.ot_max_iter < 1:
            raise ValueError("ot_reg and ot_tol must be positive and ot_max_iter at least 1")
        if not 0 < self.gce_q <= 1:
            raise ValueError(f"gce_q must be in (0, 1], got {self.gce_q!r}")
        if not 0 < self.curriculum_start <= 1 or self.curriculum_epochs < 1:
            raise ValueError("curriculum_start must be in (0, 1] and curriculum_epochs at least 1")


VisPromptArguments = flags_from_dataclasses(
    "VisPromptArguments",
    [(VisPromptContextConfig, None), (VisPromptGuidanceConfig, None), (VisPromptTrainingConfig, None)],
    doc="The flags of `--method visprompt`: `VisPromptContextConfig`, `VisPromptGuidanceConfig`, "
        "`VisPromptTrainingConfig`.",
)


class VisPromptMethod(Method):
    """Image-guided context; per epoch an OT clean/noisy split; CE on clean, a robust loss on noisy samples."""

    name = "visprompt"
    title = "VisPrompt"
    Arguments = VisPromptArguments
    printed_metrics = ("clean_precision", "clean_recall")

    def __init__(self, args):
        super().__init__(args)
        self.options = VisPromptTrainingConfig(**config_kwargs(args, VisPromptTrainingConfig))
        self.history: list[dict] = []

    def build_model(self, run: RunContext):
        if len(run.train_names) < 2:
            raise ValueError("VisPrompt's OT needs at least two training classes")
        return run.build(
            VisPromptForImageClassification,
            guidance_config=VisPromptGuidanceConfig(**config_kwargs(self.args, VisPromptGuidanceConfig)),
            **config_kwargs(self.args, VisPromptContextConfig),
        )

    def begin_training(self, model, run: RunContext, prefix_cache=None) -> None:
        super().begin_training(model, run, prefix_cache)
        self.run = run
        self.given = torch.tensor(run.splits["train"]["label"], dtype=torch.long)
        noise = run.splits.get("label_noise")
        self.true = torch.tensor(noise["true_labels"], dtype=torch.long) if noise else self.given.clone()
        self.clean = torch.ones(len(self.given), dtype=torch.bool)
        self.keep = torch.ones(len(self.given), dtype=torch.bool)

    # ---------------------------------------------------------------------------------------- the OT pass
    @torch.no_grad()
    def score_training_set(self):
        """Probabilities `(N, K)` and mean gates `(N,)` (NaN without image guidance) of every training image, in
        eval mode with the eval transform."""
        model, run = self.model, self.run
        was_training = model.training
        model.eval()
        device = run.accelerator.device
        batch_size = run.train_args.per_device_eval_batch_size
        probs, gates = [], []
        for start in range(0, len(self.given), batch_size):
            indices = torch.arange(start, min(start + batch_size, len(self.given)))
            if self.prefix_cache is not None:
                inputs = self.prefix_cache.model_inputs(indices, device)
            else:
                inputs = {"pixel_values": run.train_rows.pixel_values(indices.tolist(), run.image_processor).to(device)}
            out = model(**inputs)
            probs.append(out.logits.float().softmax(dim=-1).cpu())
            gate = getattr(out, "gate", None)
            gates.append(gate.float().cpu() if gate is not None else torch.full((len(indices),), float("nan")))
        model.train(was_training)
        return torch.cat(probs), torch.cat(gates)

    def begin_epoch(self, epoch: int) -> None:
        config = self.options
        if not config.use_ot or config.ot_scope == "batch":
            return
        probs, gates = self.score_training_set()
        y_ot, confidence = ot_assignments(probs, config.ot_reg, config.ot_max_iter, config.ot_tol)
        self.clean = self.given == y_ot
        if config.curriculum:
            budget = config.curriculum_start + (1 - config.curriculum_start) * min(1.0, epoch / config.curriculum_epochs)
            self.keep = curriculum_keep(confidence.float(), budget)
        if not bool(self.clean.any()):
            logger.warning("epoch %d: OT finds no clean sample; every sample is trained with the noisy loss",
                           epoch + 1)
        entry = {"epoch": epoch + 1, **clean_set_metrics(self.clean, self.given, self.true)}
        if not bool(torch.isnan(gates).all()):
            for name, mask in (("gate_clean", self.clean), ("gate_noisy", ~self.clean)):
                entry[name] = gates[mask].mean().item() if bool(mask.any()) else None
        self.history.append(entry)
        message = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in entry.items())
        self.run.accelerator.print(f"OT pass: {message}")
        if self.run.train_args.report_to != "none":
            self.run.accelerator.log({f"ot/{k}": v for k, v in entry.items() if v is not None})

    # ---------------------------------------------------------------------------------------- a step
    def training_step(self, batch) -> tuple[torch.Tensor, dict]:
        config = self.options
        labels = batch["labels"]
        logits = self.model(**self.image_inputs(batch)).logits
        indices = batch["indices"].cpu()
        if config.use_ot and config.ot_scope == "batch":
            clean = (labels.cpu() == ot_assignments(logits.detach().float().softmax(-1), config.ot_reg,
                                                    config.ot_max_iter, config.ot_tol)[0])
        else:
            clean = self.clean[indices]
        if not bool(clean.any()) and config.use_ot:
            clean = torch.zeros_like(clean)  # no clean sample: the noisy loss for all (warned in the OT pass)
        keep = self.keep[indices].to(logits.device)
        clean = clean.to(logits.device)
        clean_losses = per_sample_loss(logits, labels, config.clean_loss, config.gce_q)
        noisy_losses = per_sample_loss(logits, labels, config.noisy_loss, config.gce_q)
        weights = keep.float()
        if config.combine == "weighted":
            losses = torch.where(clean, clean_losses, noisy_losses)
            loss = (losses * weights).sum() / weights.sum().clamp_min(1)
        else:
            clean_w, noisy_w = weights * clean.float(), weights * (~clean).float()
            loss = ((clean_losses * clean_w).sum() / clean_w.sum().clamp_min(1)
                    + (noisy_losses * noisy_w).sum() / noisy_w.sum().clamp_min(1))
        return loss, {"train/clean_fraction": clean.float().mean().item()}

    # ---------------------------------------------------------------------------------------- after training
    def extra_metrics(self, model, run: RunContext, results: dict) -> dict:
        if not self.history:
            return {}
        last = self.history[-1]
        return {**{k: v for k, v in last.items() if k != "epoch"}, "ot_history": self.history}

    @classmethod
    def trained_parts(cls, model_folder: str) -> str:
        return ("The context vectors and the image guidance (cross-attention over the frozen image tokens, FiLM gate "
                "and FFN) are trained, under label noise with an OT clean/noisy split.")
