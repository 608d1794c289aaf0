"""The embedded default's model: a tiny ``CLIPConfig`` (``ModelSize``) and its contrastive pre-training.

``pretrain_clip`` trains a ``transformers.CLIPModel`` from scratch with CLIP's symmetric InfoNCE
on (image, caption) pairs, drawing each caption afresh with the caption noise of
``embedded_captions``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dataset_scripts.embedded_captions import draw_caption_names


@dataclass
class ModelSize:
    """The sizes of the tiny CLIP; the field names are the build's command-line flags."""

    image_size: int = 28
    patch_size: int = 7
    vision_hidden: int = 96
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2
    max_position_embeddings: int = 77
    projection_dim: int = 64


def make_clip_config(size: ModelSize, tokenizer):
    """A ``CLIPConfig`` of ``size``, with ``tokenizer``'s vocabulary size and special tokens."""
    from transformers import CLIPConfig

    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=size.text_hidden,
        intermediate_size=4 * size.text_hidden,
        projection_dim=size.projection_dim,
        num_hidden_layers=size.text_layers,
        num_attention_heads=size.text_heads,
        max_position_embeddings=size.max_position_embeddings,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = dict(
        hidden_size=size.vision_hidden,
        intermediate_size=4 * size.vision_hidden,
        projection_dim=size.projection_dim,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.vision_heads,
        num_channels=3,
        image_size=size.image_size,
        patch_size=size.patch_size,
        hidden_act="quick_gelu",
    )
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=size.projection_dim)


def tokenize_captions(tokenizer, class_names: Sequence[str], templates: Sequence[str], max_length: int):
    """Every (name, template) caption, tokenized: ``input_ids`` and ``attention_mask`` of shape
    ``(num_names, num_templates, length)``, as ``pretrain_clip`` takes them."""
    texts = [t.format(c) for c in class_names for t in templates]
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    if enc["input_ids"].shape[1] >= max_length:
        longest = max(texts, key=len)
        raise ValueError(f"caption {longest!r} does not fit in {max_length} tokens: raise --max_position_embeddings")
    shape = (len(class_names), len(templates), -1)
    return enc["input_ids"].view(shape), enc["attention_mask"].view(shape)


def _lr_lambda(warmup: int, total: int):
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return fn


def pretrain_clip(
    model,
    pixel_values: torch.Tensor,
    labels: torch.Tensor,
    caption_ids: torch.Tensor,
    caption_mask: torch.Tensor,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_ratio: float,
    seed: int,
    caption_probs: torch.Tensor | None = None,
    progress: bool = True,
) -> tuple[list[float], np.ndarray]:
    """Symmetric InfoNCE (CLIP's loss) on (image, caption) pairs; returns the losses and the caption counts.

    Each time an image is drawn its caption is made afresh: a caption name drawn from
    ``caption_probs[label]`` (the caption noise; by default the image's own class name) put into
    a random template. ``caption_ids`` / ``caption_mask`` hold every (name, template) caption,
    shape ``(num_names, num_templates, length)``.

    The batch's captions are deduplicated: every distinct caption text is encoded once and is one
    column of the image-text logits. Captions naming the same thing (the same drawn name, any
    template) are positives of each other, whatever the images' true labels, which the loss never
    sees. The image-to-text half then estimates p(caption name | image), so a look-alike's name
    that is the majority caption of a class pulls that class's images towards it; the
    text-to-image half (a softmax over the batch's images) estimates the pointwise mutual
    information instead, which discounts frequent names. (With one column per image and repeated
    captions, both halves would learn the mutual information and the noise would barely show.)
    Returns the per-step losses and ``counts[true label, caption name]`` of the captions drawn.
    """
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or name == "logit_scale" else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(int(warmup_ratio * steps), steps))
    num_names, num_templates = caption_ids.shape[:2]
    num_classes = int(labels.max()) + 1 if caption_probs is None else caption_probs.shape[0]
    if caption_probs is None:
        caption_probs = torch.eye(num_classes, num_names, dtype=torch.float64)
    if tuple(caption_probs.shape) != (num_classes, num_names):
        raise ValueError(f"caption_probs has shape {tuple(caption_probs.shape)}, expected {(num_classes, num_names)}")
    flat_ids = caption_ids.reshape(-1, caption_ids.shape[-1])
    flat_mask = caption_mask.reshape(-1, caption_mask.shape[-1])
    counts = torch.zeros(num_classes, num_names, dtype=torch.long)
    n = len(labels)
    batch_size = min(batch_size, n)
    perm, cursor = torch.randperm(n, generator=gen), 0
    losses = []
    model.train()
    bar = tqdm(range(steps), desc="pre-training", disable=not progress, mininterval=2.0)
    for _ in bar:
        if cursor + batch_size > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor : cursor + batch_size]
        cursor += batch_size
        y = labels[idx]
        name = draw_caption_names(y, caption_probs, gen)
        tpl = torch.randint(num_templates, (len(idx),), generator=gen)
        counts.index_put_((y, name), torch.ones_like(y), accumulate=True)
        # One column per distinct caption text of the batch.
        uniq = torch.unique(name * num_templates + tpl)
        ids, mask = flat_ids[uniq], flat_mask[uniq]
        length = int(mask.sum(1).max())
        text = model.get_text_features(input_ids=ids[:, :length], attention_mask=mask[:, :length]).pooler_output
        image = model.get_image_features(pixel_values=pixel_values[idx]).pooler_output
        text = F.normalize(text, dim=-1)
        image = F.normalize(image, dim=-1)
        logits = model.logit_scale.exp() * image @ text.t()  # (images, distinct captions)
        positive = (name[:, None] == (uniq // num_templates)[None, :]).float()
        loss = 0.5 * (
            F.cross_entropy(logits, positive / positive.sum(1, keepdim=True))
            + F.cross_entropy(logits.t(), positive.t() / positive.t().sum(1, keepdim=True))
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}", refresh=False)
    bar.close()
    model.eval()
    return losses, counts.numpy()
