"""ANPrompt as a training method: the description cache, the weak-noise features and noise prompts it prepares, and
its loss `CE(l_A, y) + lambda L_sim + gamma L_WA` (METHODS.md, "ANPrompt"; the model is
`modeling_capt/modeling_anprompt.py`).

- `L_sim = (1 - cos(f_v, f_v^CLIP)) + (1 - cos(f_t, f_t^CLIP))`, each averaged (over the batch, over the classes); the
  frozen CLIP features are the same model with its layer hooks disabled: the class features computed once, the image
  features once per training image (kept by row index), so they cost one pass of the upper vision layers per image
  over the whole run.
- `L_WA` compares `softmax l_A` with `softmax l_W` (`--wa_distance kl|l1|mse|cos`); the KL is summed over the batch,
  `KL(p_A || p_W)` by default (`--kl_direction forward`, paper) or `KL(p_W || p_A)` (`reverse`, the released code).
- `gamma = 1 / (std(l) * numel(l) + 1e-6)` with `l = l_R` (paper) or `l_A` (`--gamma_source align`), detached unless
  `--gamma_detach false`.
- Weak-noise features (`--fw_sampling`): `once` draws one main and one noise sentence per class (seeded) and keeps
  them; `mean` averages every sentence; `per_step` draws new ones every step (the checkpoint keeps the `once` draw).
- `--strong_perturbation drop|mask|shuffle|synonym` (ablation, paper Table X; default `none`): the main sentences are
  perturbed once, seeded (`trainers/text_perturbations.py`), before the weak-noise features and the k-means noise
  prompts are built from them; the saved description cache stays clean.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dataset_scripts.data import check_local_path
from modeling_capt import AnpromptForImageClassification, AnpromptPromptConfig
from trainers.confusion import kmeans
from trainers.flags import config_kwargs, flags_from_dataclasses
from trainers.methods.base import Method, RunContext
from trainers.prefix_cache import TextPrefixCache
from trainers.semantic_prompts import get_description_generator, save_descriptions
from trainers.text_perturbations import STRONG_PERTURBATIONS, perturb_descriptions


logger = logging.getLogger(__name__)

FW_SAMPLING = ("once", "per_step", "mean")
WA_DISTANCES = ("kl", "l1", "mse", "cos")


@dataclass
class AnpromptTrainingConfig:
    """ANPrompt's training options (the model's own, prompts and logits, are `AnpromptPromptConfig`'s)."""

    lambda_sim: float = field(default=1.0, metadata={"help": "Weight of L_sim (the paper sets it per dataset)."})
    use_waloss: bool = field(default=True, metadata={"help": "Add gamma L_WA (off: the WALoss ablation)."})
    wa_distance: str = field(default="kl", metadata={"help": "L_WA distance: kl, l1, mse or cos."})
    kl_direction: str = field(default="forward", metadata={"help": "forward: KL(p_A || p_W) (paper); reverse: "
                                                                    "KL(p_W || p_A) (code)."})
    gamma_source: str = field(default="weak_noise", metadata={"help": "gamma from std(l_R) (weak_noise) or l_A."})
    gamma_detach: bool = field(default=True, metadata={"help": "Detach gamma from the graph."})
    fw_sampling: str = field(default="once", metadata={"help": "Weak-noise sentences: once, per_step or mean."})
    description_generator: str = field(default="template", metadata={"help": "template, json or lm."})
    description_file: str | None = field(default=None, metadata={"help": "Main sentences {class: [...]} (CoPrompt)."})
    noise_description_file: str | None = field(default=None, metadata={"help": "Noise sentences {class: [...]} "
                                                                                 "(HPT)."})
    description_lm: str | None = field(default=None, metadata={"help": "Local causal LM for --description_generator "
                                                                       "lm."})
    strong_perturbation: str = field(default="none", metadata={"help": "Ablation: none, drop, mask, shuffle or "
                                                                          "synonym on the main sentences."})
    perturbation_rate: float = field(default=0.3, metadata={"help": "Share of words dropped, masked or replaced by "
                                                                       "--strong_perturbation."})

    def __post_init__(self):
        choices = {"wa_distance": WA_DISTANCES, "kl_direction": ("forward", "reverse"),
                   "gamma_source": ("weak_noise", "align"), "fw_sampling": FW_SAMPLING,
                   "description_generator": ("template", "json", "lm"), "strong_perturbation": STRONG_PERTURBATIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not self.lambda_sim >= 0:
            raise ValueError(f"--lambda_sim must be non-negative, got {self.lambda_sim}")
        if not 0 < self.perturbation_rate <= 1:
            raise ValueError(f"--perturbation_rate must be in (0, 1], got {self.perturbation_rate}")
        if self.description_generator == "json" and not (self.description_file and self.noise_description_file):
            raise ValueError("--description_generator json needs --description_file and --noise_description_file")
        if self.description_generator == "lm" and not self.description_lm:
            raise ValueError("--description_generator lm needs --description_lm")
        check_local_path("description_lm", self.description_lm)
        for name in ("description_file", "noise_description_file"):
            check_local_path(name, getattr(self, name), always_local=True)


#: Per CoOp benchmark: `lambda_sim` (the weight of L_sim) and `vision_beta` (the vision slots' replacement weight).
#: The paper gives no value of either (Eq. 3 only names lambda; beta is not in it). These are the released code's
#: (github.com/gaoyansheng123/ANPrompt, commit 92a1db1, `trainers/config.py`, `get_dataset_specified_config`:
#: `TRAINER.MMRL.REG_WEIGHT` and `TRAINER.MMRL.BETA`, which override its YAML configs for every dataset). The protocol
#: runner applies them ([`AnpromptMethod.dataset_defaults`]); a run of the trainer alone keeps the flags' defaults.
DATASET_SETTINGS = {
    "imagenet": {"lambda_sim": 0.5, "vision_beta": 0.9},
    "caltech101": {"lambda_sim": 0.5, "vision_beta": 0.6},
    "oxford_pets": {"lambda_sim": 0.2, "vision_beta": 0.7},
    "stanford_cars": {"lambda_sim": 7.0, "vision_beta": 0.7},
    "oxford_flowers": {"lambda_sim": 4.0, "vision_beta": 0.4},
    "food101": {"lambda_sim": 5.0, "vision_beta": 0.1},
    "fgvc_aircraft": {"lambda_sim": 6.0, "vision_beta": 0.9},
    "sun397": {"lambda_sim": 6.0, "vision_beta": 0.5},
    "dtd": {"lambda_sim": 6.0, "vision_beta": 0.9},
    "eurosat": {"lambda_sim": 0.001, "vision_beta": 0.2},
    "ucf101": {"lambda_sim": 3.0, "vision_beta": 0.9},
}

#: The prompt options that are trainer flags.
PROMPT_FLAGS = ("num_prompts", "prompt_layers", "noise_alpha", "anti_noise_eps", "vision_beta", "theta",
                "second_logits", "eval_logits", "nrvpp_lora_rank")

AnpromptArguments = flags_from_dataclasses(
    "AnpromptArguments", [(AnpromptTrainingConfig, None), (AnpromptPromptConfig, PROMPT_FLAGS)],
    doc="The flags of `--method anprompt`: `AnpromptTrainingConfig` and the prompt options of `AnpromptPromptConfig`.",
)


# ------------------------------------------------------------------------------------------------ the loss terms
def similarity_loss(image_embeds, clip_image_embeds, text_embeds, clip_text_embeds) -> torch.Tensor:
    """`L_sim = mean(1 - cos(f_v, f_v^CLIP)) + mean(1 - cos(f_t, f_t^CLIP))`."""
    image = 1 - F.cosine_similarity(image_embeds, clip_image_embeds.to(image_embeds.dtype), dim=-1).mean()
    text = 1 - F.cosine_similarity(text_embeds, clip_text_embeds.to(text_embeds.dtype), dim=-1).mean()
    return image + text


def adaptive_gamma(logits: torch.Tensor, detach: bool = True) -> torch.Tensor:
    """`gamma = 1 / (std(logits) * numel(logits) + 1e-6)`."""
    gamma = 1.0 / (logits.std() * logits.numel() + 1e-6)
    return gamma.detach() if detach else gamma


def weak_alignment_loss(logits_align, logits_nrvpp, distance: str = "kl", direction: str = "forward"):
    """`L_WA` between `softmax l_A` and `softmax l_W`: the KL summed over the batch (`forward`: `KL(p_A || p_W)`,
    `reverse`: `KL(p_W || p_A)`), or the summed L1 / squared distance, or `sum(1 - cos)`, of the probabilities."""
    if distance == "kl":
        p, q = (logits_align, logits_nrvpp) if direction == "forward" else (logits_nrvpp, logits_align)
        # F.kl_div(log q, p) = sum p (log p - log q) = KL(p || q)
        return F.kl_div(F.log_softmax(q, dim=-1), F.log_softmax(p, dim=-1), reduction="sum", log_target=True)
    p_align, p_nrvpp = logits_align.softmax(-1), logits_nrvpp.softmax(-1)
    if distance == "l1":
        return (p_align - p_nrvpp).abs().sum()
    if distance == "mse":
        return (p_align - p_nrvpp).pow(2).sum()
    return (1 - F.cosine_similarity(p_align, p_nrvpp, dim=-1)).sum()


# ------------------------------------------------------------------------------------------------ preparation
def choose_sentences(main: dict, noise: dict, names, sampling: str, seed: int) -> dict:
    """`{name: {"main": [...], "noise": [...]}}`: every sentence (`mean`) or one of each, seeded (`once`,
    `per_step`'s kept draw)."""
    generator = torch.Generator().manual_seed(seed)
    chosen = {}
    for name in names:
        if sampling == "mean":
            chosen[name] = {"main": list(main[name]), "noise": list(noise[name])}
        else:
            i = int(torch.randint(len(main[name]), (1,), generator=generator))
            j = int(torch.randint(len(noise[name]), (1,), generator=generator))
            chosen[name] = {"main": [main[name][i]], "noise": [noise[name][j]]}
    return chosen


class AnpromptMethod(Method):
    """ANPrompt: anti-noise prompts in both towers, weak-noise text features, NRVPP and the WALoss."""

    name = "anprompt"
    title = "ANPrompt"
    Arguments = AnpromptArguments
    training_defaults = {"optimizer": "adamw", "learning_rate": 1e-3, "num_train_epochs": 10,
                         "per_device_train_batch_size": 4, "weight_decay": 5e-4}
    dataset_defaults = DATASET_SETTINGS

    def prompt_config(self) -> AnpromptPromptConfig:
        return AnpromptPromptConfig(**config_kwargs(self.args, AnpromptPromptConfig))

    def check(self, model_args) -> None:
        from transformers import CLIPConfig

        config = CLIPConfig.from_pretrained(model_args.model_name_or_path)
        settings = self.prompt_config()
        settings.select_layers(config.vision_config.num_hidden_layers)
        settings.select_layers(config.text_config.num_hidden_layers)

    def prepare(self, run: RunContext) -> None:
        """The description cache (saved to `OUTPUT_DIR/descriptions/{main,noise}.json`), the sentences kept per class
        and the main-sentence features of the training classes (for the k-means noise prompts)."""
        args = self.args
        names = list(run.train_names) + list(run.splits.get("novel_names") or [])
        generator = get_description_generator(args.description_generator, args.description_file,
                                              args.noise_description_file, args.description_lm)
        if args.description_generator == "json":  # the training classes must have sentences; novel ones may not
            main, noise = generator.generate(run.train_names)
            main_all, noise_all = _optional_json(args, names)
            main, noise = {**main_all, **main}, {**noise_all, **noise}
        else:
            main, noise = generator.generate(names)
        if run.accelerator.is_main_process:
            folder = os.path.join(run.train_args.output_dir, "descriptions")
            save_descriptions(main, os.path.join(folder, "main.json"))
            save_descriptions(noise, os.path.join(folder, "noise.json"))
        if args.strong_perturbation != "none":
            main = perturb_descriptions(main, args.strong_perturbation, args.perturbation_rate, run.train_args.seed)
        known = [name for name in names if name in main and name in noise]
        run.state["descriptions"] = (main, noise)
        run.state["class_sentences"] = choose_sentences(main, noise, known, args.fw_sampling, run.train_args.seed)

    def build_model(self, run: RunContext):
        main, noise = run.state["descriptions"]
        model = run.build(AnpromptForImageClassification, prompt_config=self.prompt_config(),
                          class_sentences=run.state["class_sentences"])
        pooled = torch.cat([model.encode_sentences(main[name]) for name in run.train_names]).cpu()
        model.set_noise_prompts(kmeans(pooled, model.num_prompts, seed=run.train_args.seed)
                                if pooled.shape[0] >= model.num_prompts else _repeat_rows(pooled, model.num_prompts))
        if self.args.fw_sampling == "per_step":
            run.state["sentence_features"] = [
                (model.encode_sentences(main[name]), model.encode_sentences(noise[name])) for name in run.train_names
            ]
        return model

    # ------------------------------------------------------------------------------------------------ training
    def begin_training(self, model, run: RunContext, prefix_cache=None) -> None:
        super().begin_training(model, run, prefix_cache)
        self.accelerator = run.accelerator
        unwrapped = run.accelerator.unwrap_model(model)
        self.text_cache = None
        if run.train_args.prefix_cache != "off":
            self.text_cache = TextPrefixCache.build(unwrapped, run.accelerator)
        with torch.no_grad(), unwrapped.layer_hooks_disabled():
            self.clip_text = unwrapped.get_class_text_features().detach().clone()
        self.clip_image = None  # (rows, P) frozen CLIP image features, filled as rows are first seen
        self.clip_image_seen = None
        self.num_rows = len(run.splits["train"])
        self.sentence_features = run.state.get("sentence_features")
        self.generator = torch.Generator().manual_seed(run.train_args.seed)

    def _clip_image_features(self, unwrapped, batch, inputs) -> torch.Tensor:
        indices = batch["indices"].to(batch["labels"].device)
        if self.clip_image is None:
            dim = unwrapped.config.clip_config.projection_dim
            self.clip_image = torch.zeros(self.num_rows, dim, device=indices.device)
            self.clip_image_seen = torch.zeros(self.num_rows, dtype=torch.bool, device=indices.device)
        new = ~self.clip_image_seen[indices]
        if bool(new.any()):
            with torch.no_grad(), unwrapped.layer_hooks_disabled():
                subset = {key: (value[new] if torch.is_tensor(value) and value.shape[0] == len(indices) else value)
                          for key, value in inputs.items()}
                features = unwrapped.get_image_features(**{"pixel_values": None, **subset})
            features = F.normalize(features.float(), dim=-1)
            self.clip_image[indices[new]] = features
            self.clip_image_seen[indices[new]] = True
        return self.clip_image[indices]

    def _step_weak_noise(self, unwrapped):
        if self.sentence_features is None:
            return None
        rows = []
        for main, noise in self.sentence_features:
            i = int(torch.randint(main.shape[0], (1,), generator=self.generator))
            j = int(torch.randint(noise.shape[0], (1,), generator=self.generator))
            rows.append(unwrapped.weak_noise_from_sentences(main[i : i + 1], noise[j : j + 1]))
        return torch.stack(rows)

    def training_step(self, batch):
        args, labels = self.args, batch["labels"]
        unwrapped = self.accelerator.unwrap_model(self.model)
        inputs = self.image_inputs(batch)
        text_inputs = self.text_cache.model_inputs(unwrapped) if self.text_cache is not None else {}
        out = self.model(**inputs, **text_inputs, weak_noise_features=self._step_weak_noise(unwrapped))
        ce = F.cross_entropy(out.logits_align, labels)
        sim = similarity_loss(out.image_embeds, self._clip_image_features(unwrapped, batch, inputs), out.text_embeds,
                              self.clip_text)
        loss = ce + args.lambda_sim * sim
        logs = {"train/ce": ce.item(), "train/sim": sim.item()}
        if args.use_waloss:
            source = out.logits_weak_noise if args.gamma_source == "weak_noise" else out.logits_align
            gamma = adaptive_gamma(source, detach=args.gamma_detach)
            wa = weak_alignment_loss(out.logits_align, out.logits_nrvpp, args.wa_distance, args.kl_direction)
            loss = loss + gamma * wa
            logs.update({"train/wa": wa.item(), "train/gamma": float(gamma)})
        return loss, logs

    def generators(self) -> dict:
        return {"anprompt_step": self.generator}

    @classmethod
    def trained_parts(cls, model_folder: str) -> str:
        return ("The anti-noise prompts, their per-layer projections into both towers and NRVPP's LoRA are trained "
                "(ANPrompt).")


def _optional_json(args, names):
    """Sentences the JSON files hold for `names` (novel classes may have none: they then get the template)."""
    from trainers.semantic_prompts import load_descriptions

    return load_descriptions(args.description_file), load_descriptions(args.noise_description_file)


def _repeat_rows(x: torch.Tensor, count: int) -> torch.Tensor:
    return x[torch.arange(count) % x.shape[0]]
