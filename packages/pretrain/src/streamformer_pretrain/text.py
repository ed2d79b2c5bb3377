"""Text side of pretraining: prompt templates and a word-level tokenizer for the synthetic world.

Real runs use SigLIP's own tokenizer (`AutoTokenizer.from_pretrained(siglip_dir)`); the synthetic
world has a closed vocabulary, so a word-level tokenizer built from it stands in, saved and loaded
like any transformers tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

# Action-recognition / localization class templates: 4 openings x 7 endings (reference 7.1).
_OPENINGS = ("a photo of", "a video of", "a example of", "a demonstration of")
_ENDINGS = ("{}.", "a person {}.", "a person using {}.", "a person doing {}.", "a person during {}.",
            "a person performing {}.", "a person practicing {}.")  # fmt: skip
CLASS_TEMPLATES = tuple(f"{opening} {ending}" for opening in _OPENINGS for ending in _ENDINGS)
SEGMENTATION_TEMPLATES = ("{}",)

SPECIAL_TOKENS = ("<pad>", "<unk>", "</s>")
_WORD = re.compile(r"\w+|[^\w\s]+")


def words(texts: Iterable[str]) -> list[str]:
    """The sorted lower-case words and punctuation marks of `texts` (the tokenizer's pre-tokenisation)."""
    return sorted({w for text in texts for w in _WORD.findall(text.lower())})


def word_tokenizer(texts: Iterable[str], max_length: int = 16) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over every word of `texts` plus the class templates.

    Like SigLIP's: lower-case, `</s>` appended, padded to `max_length` on the right.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for word in words([*texts, *(t.format("") for t in CLASS_TEMPLATES)]):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # splits like _WORD
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="</s>", model_max_length=max_length
    )
