"""Tiny parts the videoqa tests build (nothing is downloaded): a word-level tokenizer with a chat
template and a 2-layer Qwen2 from config."""

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

WORDS = [
    "what",
    "is",
    "the",
    "person",
    "doing",
    "in",
    "video",
    "a",
    "man",
    "walks",
    "left",
    "right",
    "runs",
    "ball",
    "red",
    "blue",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)


def word_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", "user", "assistant", "system"]
    vocab = {token: i for i, token in enumerate([*specials, *WORDS])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", eos_token="<|im_end|>", chat_template=CHAT_TEMPLATE
    )


def tiny_lm(vocab_size: int, seed: int = 0):
    config = Qwen2Config(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        pad_token_id=0, bos_token_id=None, eos_token_id=3, tie_word_embeddings=False,
    )  # fmt: skip
    lm = AutoModelForCausalLM.from_config(config).eval()
    # Weight matrices at std 0.3, as in a trained model every path carries signal: a fresh init
    # (std 0.02) gives nearly uniform logits whatever the input, which no projector can steer.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lm.parameters():
            if p.ndim == 2:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return lm
