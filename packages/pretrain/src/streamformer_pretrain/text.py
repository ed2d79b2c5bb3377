"""Text side of pretraining: prompt templates and a word-level tokenizer for the synthetic world.

Real runs use SigLIP's own tokenizer (`AutoTokenizer.from_pretrained(siglip_dir)`); the synthetic
world has a closed vocabulary, so a word-level tokenizer built from it stands in, saved and loaded
like any transformers tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from streamformer.synthetic import words

# Action-recognition / localization class templates: 4 openings x 7 endings, as the original.
_OPENINGS = ("a photo of", "a video of", "a example of", "a demonstration of")
_ENDINGS = ("{}.", "a person {}.", "a person using {}.", "a person doing {}.", "a person during {}.",
            "a person performing {}.", "a person practicing {}.")  # fmt: skip
CLASS_TEMPLATES = tuple(f"{opening} {ending}" for opening in _OPENINGS for ending in _ENDINGS)
SEGMENTATION_TEMPLATES = ("{}",)

SPECIAL_TOKENS = ("<pad>", "<unk>", "</s>")


def word_tokenizer(texts: Iterable[str], max_length: int = 16) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over every word of `texts` plus the class templates.

    Like SigLIP's: lower-case, `</s>` appended, padded to `max_length` on the right.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words([*texts, *(t.format("") for t in CLASS_TEMPLATES)]):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # splits like `words`
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="</s>", model_max_length=max_length
    )


def warm_up_text_tower(
    text_model, tokenizer, groups: list[list[str]], steps: int = 300, batch_size: int = 64, lr: float = 1e-3, seed: int = 0
) -> list[float]:
    """Contrastive warm-up of a from-scratch text tower, standing in for SigLIP's pretrained one.

    Each group holds texts that mean the same (a class name under its templates, a caption with
    and without a prefix). Two texts drawn from the same group are pulled together and texts of
    other groups pushed apart (InfoNCE, temperature 0.1). Without it a random tower maps every
    class and caption to nearly the same direction (cosine ~0.97), and video and text towers
    trained jointly from scratch collapse together. Returns the loss per step.
    """
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in text_model.parameters() if p.requires_grad], lr=lr)
    batch_size = min(batch_size, len(groups))
    device = next(text_model.parameters()).device

    def embed(texts: list[str]):
        ids = tokenizer(texts, padding="max_length", truncation=True, return_tensors="pt")["input_ids"].to(device)
        return F.normalize(text_model(input_ids=ids).pooler_output, dim=-1)

    def draw(chosen) -> list[str]:
        return [groups[g][int(torch.randint(len(groups[g]), (), generator=generator))] for g in chosen]

    losses = []
    for _ in range(steps):
        chosen = torch.randperm(len(groups), generator=generator)[:batch_size].tolist()
        logits = embed(draw(chosen)) @ embed(draw(chosen)).t() / 0.1
        target = torch.arange(len(chosen), device=device)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
