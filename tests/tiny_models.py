"""Tiny random-weight models of real Hugging Face architectures, for tests that need no download."""

from __future__ import annotations

import torch

# (model_type, config class name, kwargs giving ~4 layers, hidden 32)
_COMMON = dict(vocab_size=256, num_hidden_layers=4, max_position_embeddings=128, bos_token_id=1, eos_token_id=2)

TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                  num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2": ("Qwen2Config", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                  num_key_value_heads=2)),
    "mistral": ("MistralConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                      num_key_value_heads=2)),
    "gemma": ("GemmaConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=8)),
    "phi3": ("Phi3Config", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                num_key_value_heads=2, pad_token_id=0)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=4, n_head=4, n_positions=128, n_inner=64)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4)),
    "opt": ("OPTConfig", dict(hidden_size=32, ffn_dim=64, num_attention_heads=4, word_embed_proj_dim=32)),
}


def make_tiny_model(arch: str, vocab_size: int = 256, seed: int = 0):
    import transformers

    cls_name, kwargs = TINY_CONFIGS[arch]
    params = {**_COMMON, **kwargs, "vocab_size": vocab_size}
    if arch == "gpt2":
        params.pop("num_hidden_layers")
        params.pop("max_position_embeddings")
    config = getattr(transformers, cls_name)(**params)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    model.eval()
    return model


def make_tiny_tokenizer(vocab_size: int = 256):
    """A real fast tokenizer (word-level, tokens t3 ... t{vocab_size - 1}) that loads in milliseconds,
    for model folders whose tests do not care about text (the real SmolLM2 tokenizer takes ~0.6 s)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<unk>")
