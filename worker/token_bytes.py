"""The raw bytes of one token (``logprobs`` entries carry them as ``bytes``).

A token's text on its own can be a fragment of a multi-byte character (byte-level BPE
splits "é" into two tokens; SentencePiece has ``<0xC3>`` byte tokens): decoding it alone
gives U+FFFD, and its UTF-8 encoding is not the token's bytes. Clients rebuild such
characters from ``bytes``, so they are read from the token itself, by the scheme mlx-lm's
detokenizer for this tokenizer uses.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from mlx_lm.tokenizer_utils import BPEStreamingDetokenizer, SPMStreamingDetokenizer

_SPM_SPACE = "\u2581".encode()


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """Byte-level BPE's character for each byte (GPT-2's table): printable bytes stand for
    themselves, the others are shifted to code points from 256 up."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if chr(b) not in table:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def token_bytes(tokenizer: Any) -> Callable[[int], bytes]:
    """``token id → bytes`` for an mlx-lm ``TokenizerWrapper`` (cached per id)."""
    detokenizer = tokenizer.detokenizer
    if isinstance(detokenizer, SPMStreamingDetokenizer):
        table: list[bytes] = detokenizer.tokenmap

        def spm(token: int) -> bytes:
            return table[token].replace(_SPM_SPACE, b" ")

        return lru_cache(maxsize=1 << 16)(spm)
    if isinstance(detokenizer, BPEStreamingDetokenizer):
        pieces: list[str] = detokenizer.tokenmap
        decoder = _byte_level_decoder()

        def byte_level(token: int) -> bytes:
            piece = pieces[token] or ""
            return b"".join(bytes([decoder[c]]) if c in decoder else c.encode() for c in piece)

        return lru_cache(maxsize=1 << 16)(byte_level)

    def plain(token: int) -> bytes:
        return str(tokenizer.decode([token])).encode()

    return lru_cache(maxsize=1 << 16)(plain)
