"""The shipped small GPT-NeoX (Pythia's architecture) trained on WikiText-2: its tokenizer and config.

Pythia's choices (Biderman et al. 2023, the GPT-NeoX library): parallel residual
(``x + attn(ln1(x)) + mlp(ln2(x))``), rotary embeddings on 25 % of each head's dimensions, a fused
``query_key_value`` projection interleaved per head, untied input / output embeddings, GELU MLP of 4x
the width. Size: pythia-70m's 6 layers x 8 heads at width 256 (pythia-70m: 512), so the model fits the
project's 30 MB budget for a shipped LM and trains in under an hour on two CPU cores
(``python -m kvcompress.train_gpt_neox``).

The tokenizer is a byte-level BPE (GPT-NeoX's kind) trained with ``tokenizers`` on the training split
only (WikiText-2 *valid*; *test* stays for evaluation).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTNeoXConfig, PreTrainedTokenizerFast

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_NEOX = REPO_ROOT / "playground" / "models" / "neox-wikitext"
SHIPPED_NEOX_NAMES = ("neox-wikitext", "neox")  # --model names of the shipped checkpoint
END_OF_TEXT = "<|endoftext|>"
PADDING = "<|padding|>"


def train_tokenizer(text_path: str | Path, vocab_size: int = 4096) -> PreTrainedTokenizerFast:
    """Byte-level BPE of ``vocab_size`` tokens learned from the lines of ``text_path``; ``<|endoftext|>`` is
    BOS / EOS / UNK as in GPT-NeoX, ``<|padding|>`` pads."""
    text_path = Path(text_path)
    if not text_path.is_file():
        raise FileNotFoundError(f"tokenizer training text {text_path} is absent (WikiText-2 valid: "
                                "../shared/data/wikitext-2/valid.txt)")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[END_OF_TEXT, PADDING],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    lines = text_path.read_text(encoding="utf-8").splitlines(keepends=True)
    backend.train_from_iterator(lines, trainer=trainer, length=len(lines))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT,
                                   unk_token=END_OF_TEXT, pad_token=PADDING, model_max_length=2048)


def neox_config(vocab_size: int, hidden_size: int = 256, layers: int = 6, heads: int = 8,
                max_positions: int = 2048, hidden_dropout: float = 0.1, bos_token_id: int = 0,
                eos_token_id: int = 0) -> GPTNeoXConfig:
    """A Pythia-style config (module docstring). Attention dropout stays 0: with it SDPA leaves its fused
    CPU kernel (4 x slower training steps here)."""
    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden_size,
        hidden_act="gelu",
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        max_position_embeddings=max_positions,
        use_parallel_residual=True,
        tie_word_embeddings=False,
        hidden_dropout=hidden_dropout,
        attention_dropout=0.0,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
    )
