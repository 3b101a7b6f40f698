"""A token's raw bytes for ``logprobs`` (worker.token_bytes), by tokenizer scheme: the
bytes of a character split over several tokens add up to the character."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlx_lm.tokenizer_utils import NaiveStreamingDetokenizer, SPMStreamingDetokenizer
from mlx_lm.tokenizer_utils import load as load_tokenizer

from worker.token_bytes import token_bytes


def test_byte_level_bpe(tiny_model_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_model_dir)
    table = token_bytes(tokenizer)
    for text in ("é", "naïve café 😀", "Hello there", "<|im_end|>"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert b"".join(table(i) for i in ids) == text.encode()
    [first, second] = tokenizer.encode("é", add_special_tokens=False)  # one character, two tokens
    assert (table(first), table(second)) == (b"\xc3", b"\xa9")


class FakeHF:
    """What mlx-lm's SentencePiece detokenizer reads from a tokenizer."""

    def __init__(self) -> None:
        self.pieces = ["<unk>", "\u2581caf", "<0xC3>", "<0xA9>", "\u2581\u00e9t\u00e9"]

    def __len__(self) -> int:
        return len(self.pieces)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.pieces[i] for i in ids]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids).replace("\u2581", " ")

    def encode(self, text: str, **kwargs: Any) -> list[int]:
        return [self.pieces.index(text)] if text in self.pieces else [0]


class FakeWrapper:
    def __init__(self, detokenizer: Any) -> None:
        self.detokenizer = detokenizer
        self.hf = FakeHF()

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids)


def test_sentencepiece_byte_tokens_and_spaces() -> None:
    table = token_bytes(FakeWrapper(SPMStreamingDetokenizer(FakeHF())))
    assert table(1) == b" caf"
    assert table(2) + table(3) == "é".encode()  # byte-fallback tokens
    assert table(4) == " été".encode()


def test_other_tokenizers_use_the_decoded_text() -> None:
    table = token_bytes(FakeWrapper(NaiveStreamingDetokenizer(FakeHF())))
    assert table(4) == " été".encode()
