"""``worker.sequence.next_segment``: the detokenizer's text is read in pieces and kept short,
and the pieces add up to what the untouched detokenizer makes of the whole output."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, SPMStreamingDetokenizer
from mlx_lm.tokenizer_utils import load as load_tokenizer

from tests.test_token_bytes import FakeHF
from worker.sequence import TEXT_KEPT, next_segment


def _stream(detokenizer: Any, tokens: list[int]) -> tuple[str, int]:
    """The output read piece by piece as the worker reads it, and the longest ``text`` held."""
    detokenizer.reset()
    pieces, longest = [], 0
    for token in tokens:
        detokenizer.add_token(token)
        pieces.append(next_segment(detokenizer))
        longest = max(longest, len(detokenizer.text))
    detokenizer.finalize()
    pieces.append(detokenizer.last_segment)
    return "".join(pieces), longest


def _whole(detokenizer: Any, tokens: list[int]) -> str:
    detokenizer.reset()
    for token in tokens:
        detokenizer.add_token(token)
    detokenizer.finalize()
    return str(detokenizer.text)


def test_byte_level_bpe_output_is_unchanged_and_its_text_bounded(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    assert isinstance(tokenizer.detokenizer, BPEStreamingDetokenizer)
    # A leading space (dropped at the start only), characters split over tokens, newlines.
    text = " " + "naïve café 😀 — words, and more words\n" * 600
    tokens = tokenizer.encode(text, add_special_tokens=False)
    streamed, longest = _stream(tokenizer.detokenizer, tokens)
    assert streamed == _whole(tokenizer.detokenizer, tokens) == text[1:]
    assert len(text) > 5 * TEXT_KEPT and longest <= TEXT_KEPT + 16


def test_sentencepiece_output_is_unchanged_and_its_text_bounded() -> None:
    detokenizer = SPMStreamingDetokenizer(FakeHF())
    # "▁caf", "<0xC3>", "<0xA9>", "▁été" over and over: spaces between words stay, the first is dropped.
    tokens = [1, 2, 3, 4] * 2000
    streamed, longest = _stream(copy.copy(detokenizer), tokens)
    assert streamed == _whole(copy.copy(detokenizer), tokens) == ("café été" + " café été" * 1999)
    assert longest <= TEXT_KEPT + 16
