"""`tiny-random`: a tiny Llama-style causal LM and a byte-level tokenizer, built in code.

For tests and development: no files, no downloads, builds in well under a second,
and the weights are a pure function of the seed (same seed -> bit-identical weights),
so tests can compare two runs exactly.

Tokenizer: every byte is one token (a byte-level BPE with no merges), plus four
special tokens at the front of the vocabulary:

    id 0 <|endoftext|>   id 1 <|im_start|>   id 2 <|im_end|> (eos)   id 3 <pad>
    ids 4..259: the 256 bytes

The chat template is ChatML, the same layout SmolLM2-Instruct uses:

    <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n

Assistant turns are wrapped in `{% generation %}` so
`apply_chat_template(..., return_assistant_tokens_mask=True)` works.
"""
from __future__ import annotations

import torch

TINY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>")
TINY_VOCAB_SIZE = len(TINY_SPECIAL_TOKENS) + 256

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{%- else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The model's shape. Small enough that a forward+backward on a batch of short
# sequences takes milliseconds on one CPU core.
TINY_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=1024,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


def build_tiny_tokenizer(padding_side: str = "right"):
    """The byte-level tokenizer of `tiny-random` as a `PreTrainedTokenizerFast`.

    `len(tokenizer) == TINY_VOCAB_SIZE` (260). eos = `<|im_end|>`, pad = `<pad>`,
    bos = `<|im_start|>` (not added automatically: the chat template places it).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()  # 256 printable stand-ins for bytes
    # Sort by the byte each character stands for, so token id = 4 + byte value.
    byte_chars = sorted(byte_alphabet, key=_byte_of_char)
    vocab = {token: i for i, token in enumerate(TINY_SPECIAL_TOKENS)}
    vocab.update({char: len(TINY_SPECIAL_TOKENS) + i for i, char in enumerate(byte_chars)})

    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(TINY_SPECIAL_TOKENS))

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        unk_token=None,
        padding_side=padding_side,
        model_max_length=TINY_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _byte_of_char(char: str) -> int:
    """Inverse of the GPT-2 bytes->unicode map used by ByteLevel."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    code = ord(char)
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def tiny_config(**overrides):
    """The `LlamaConfig` of `tiny-random`; keyword arguments override fields."""
    from transformers import LlamaConfig

    values = dict(
        TINY_CONFIG,
        vocab_size=TINY_VOCAB_SIZE,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def build_tiny_model(seed: int = 0, **config_overrides):
    """A randomly initialised `LlamaForCausalLM`; the weights depend only on `seed`.

    The global RNG state is left untouched (initialisation runs in a forked RNG).
    """
    from transformers import GenerationConfig, LlamaForCausalLM

    config = tiny_config(**config_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    return model
