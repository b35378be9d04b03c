"""mini-sd's CLIP tokenizer, built here from the captions' words (no download).

CLIP's tokenizer is byte-pair encoding over characters, each word ending in ``</w>``. The merges
are made so that every word of mini-sd's captions becomes one token: for each word, merges are
appended (at the lowest priority) for the first adjacent pair of its current segmentation until
it is one token. A merge appended later never fires inside an earlier word, whose own merges all
rank higher, so the words do not disturb each other. Single characters stay in the vocabulary,
so any other text still tokenises (as characters).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

#: Special tokens of CLIP (start, end; the end token also pads, as in Stable Diffusion 1.x).
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: Tokens per prompt, start and end included (captions need at most 9).
MAX_LENGTH = 16

_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


def _symbols(word: str) -> list[str]:
    return [*word[:-1], word[-1] + "</w>"]


def _segment(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one word: repeatedly merge the best-ranked adjacent pair."""
    parts = _symbols(word)
    while len(parts) > 1:
        adjacent = zip(parts, parts[1:], strict=False)
        pairs = [(ranks.get(p, len(ranks)), i) for i, p in enumerate(adjacent)]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        pair = (parts[i], parts[i + 1])
        merged, j = [], 0
        while j < len(parts):
            if j < len(parts) - 1 and (parts[j], parts[j + 1]) == pair:
                merged.append(parts[j] + parts[j + 1])
                j += 2
            else:
                merged.append(parts[j])
                j += 1
        parts = merged
    return parts


def build_vocab(corpus: list[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and ordered merges under which every word of ``corpus`` is one token."""
    chars = [chr(c) for c in range(33, 127)]
    vocab: dict[str, int] = {}
    for token in [BOS, EOS, *chars, *(c + "</w>" for c in chars)]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    words = sorted({w for text in corpus for w in _WORD.findall(text.lower())})
    for word in words:
        parts = _segment(word, ranks)
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            parts = _segment(word, ranks)
    return vocab, merges


def save_tokenizer(folder: str | Path, corpus: list[str]) -> None:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab(corpus)
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=0))
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n")
    config = {
        "model_max_length": MAX_LENGTH,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": EOS,
        "tokenizer_class": "CLIPTokenizer",
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
