"""Small HF tokenizers for our own models: word-level (the demo) and character-level (restoration).

TransformerLens re-reads a tokenizer by its `name_or_path` (to get one that adds BOS), so an in-memory
tokenizer must be saved to a folder and reloaded from there: `save_tokenizer` / `load_tokenizer`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"


def build_tokenizer(vocab: Sequence[str], level: str = "word",
                    special: Sequence[str] = (PAD, BOS, EOS, UNK)) -> PreTrainedTokenizerFast:
    """A fast tokenizer with ids: special tokens first (in order), then `vocab` in order.

    level="word": whitespace-separated words; level="char": every character is a token.
    """
    if level not in ("word", "char"):
        raise ValueError(f"level must be 'word' or 'char', got {level!r}")
    tokens = list(special) + [t for t in vocab if t not in special]
    if len(set(tokens)) != len(tokens):
        raise ValueError("vocabulary has duplicate entries")
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=UNK))
    if level == "word":
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    else:
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
        tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tokens.index(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=1_000_000,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(folder))
    return folder


def load_tokenizer(folder: str | Path) -> PreTrainedTokenizerFast:
    folder = Path(folder)
    if not (folder / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {folder}")
    return PreTrainedTokenizerFast.from_pretrained(str(folder))
