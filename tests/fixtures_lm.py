"""A tiny random causal LM for the tests of the LM prompt and description generators (trainers/semantic_prompts.py)."""

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast


#: The LM's whole vocabulary besides its special tokens: whatever it writes is made of these words.
WORDS = "a an the of and is are with photo wolf husky cat lynx fur ears tail legs grey large small . , : ! ?"


def tiny_random_lm():
    """A one-layer GPT-2 with random weights and a word-level vocabulary, and its tokenizer (offline)."""
    # The vocabulary leaves out "Commonality" and "Difference": the random LM cannot write a parseable answer.
    specials = ["[PAD]", "[UNK]", "[EOS]"]
    vocab = {token: index for index, token in enumerate(specials + WORDS.split())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]", pad_token="[PAD]"
    )

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(vocab),
        n_positions=1024,
        n_embd=32,
        n_layer=1,
        n_head=2,
        initializer_range=1.0,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config).eval(), tokenizer
