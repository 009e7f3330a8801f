"""Tiny random-weight transformers with a real (small) BPE tokenizer, built offline for tests."""

from collections.abc import Callable
from pathlib import Path

from jaxinterp.extract import load_documents


def _tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(load_documents("pydoc")[:20], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_tiny_model(kind: str, directory: Path) -> str:
    """Saves a 3-layer ``llama`` or ``gpt2`` model plus tokenizer to ``directory``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = _tokenizer()
    if kind == "llama":
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                             bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
        model = LlamaForCausalLM(config)
    else:
        config = GPT2Config(vocab_size=len(tokenizer), n_embd=64, n_layer=3, n_head=4, n_positions=512,
                            bos_token_id=1, eos_token_id=2)
        model = GPT2LMHeadModel(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def save_tiny_model(config, directory: Path, tokenizer: bool = False, random_norms: bool = False) -> str:
    """Saves a random-weight ``AutoModelForCausalLM`` for ``config`` (plus the BPE tokenizer if asked).

    Biases, which transformers initialises to zero, are drawn at random too, so a backend that drops
    one is caught; with ``random_norms`` so are norm weights (initialised to one), around 1.
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(0.0, 0.2)
            elif random_norms and "norm" in name and name.endswith(".weight"):
                parameter.normal_(1.0, 0.3)
    model.save_pretrained(directory)
    if tokenizer:
        _tokenizer(config.vocab_size).save_pretrained(directory)
    return str(directory)


def saved_on_demand(configs: dict, tmp_path_factory) -> Callable[[str], str]:
    """``save(name)``: ``configs[name]`` saved once (random biases and norms) on first use, for a module fixture."""
    directories: dict[str, str] = {}

    def save(name: str) -> str:
        if name not in directories:
            directories[name] = save_tiny_model(configs[name], tmp_path_factory.mktemp(name), random_norms=True)
        return directories[name]

    return save
