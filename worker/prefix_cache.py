"""Reuse of the KV cache across requests that share a prompt prefix.

A chat client resends the whole conversation every turn; the system prompt and the
earlier turns are the same tokens as last time. mlx-lm's ``LRUPromptCache`` (a token trie
with an LRU over entries) finds the cached sequence sharing the longest prefix with a new
prompt; only the rest of the prompt is evaluated. Entries are bounded in number and bytes.

``MLXD_PROMPT_CACHE=0`` turns the cache off (benchmarks compare both);
``MLXD_PROMPT_CACHE_SIZE`` bounds the number of cached sequences (default 8).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mlx_lm.models.cache import (
    LRUPromptCache,
    can_trim_prompt_cache,
    make_prompt_cache,
    trim_prompt_cache,
)

from worker.env import switch

DEFAULT_ENTRIES = 8
# Half the machine's memory at most, and never more than 8 GiB, for cached KV state.
DEFAULT_BYTES = 8 << 30


@dataclass
class CacheHit:
    cache: list[Any]  # the KV cache to extend (fresh when nothing matched)
    rest: list[int]  # the prompt tokens still to evaluate (never empty)
    reused: int  # prompt tokens whose KV state came from the cache


def cache_entries() -> int:
    """How many sequences the cache keeps (``MLXD_PROMPT_CACHE_SIZE``, at least one)."""
    return max(int(os.environ.get("MLXD_PROMPT_CACHE_SIZE", DEFAULT_ENTRIES)), 1)


class PrefixCache:
    def __init__(self, model: Any, entries: int | None = None, max_bytes: int = DEFAULT_BYTES) -> None:
        self.model = model
        self.enabled = switch("MLXD_PROMPT_CACHE")
        size = max(entries, 1) if entries is not None else cache_entries()
        self._lru = LRUPromptCache(max_size=size, max_bytes=max_bytes)

    def fetch(self, tokens: list[int]) -> CacheHit:
        """The cache to continue from for ``tokens`` (consumed: store it back when done)."""
        if not self.enabled or not tokens:
            return CacheHit(make_prompt_cache(self.model), list(tokens), 0)
        cache, rest = self._lru.fetch_nearest_cache(self.model_key, tokens)
        if cache is None:
            return CacheHit(make_prompt_cache(self.model), list(tokens), 0)
        if not rest:
            # An exact hit: one token must still go through the model to get the next
            # token's logits, so give it back to the prompt.
            if not can_trim_prompt_cache(cache):
                return CacheHit(make_prompt_cache(self.model), list(tokens), 0)
            trim_prompt_cache(cache, 1)
            rest = tokens[-1:]
        return CacheHit(cache, list(rest), len(tokens) - len(rest))

    def store(self, tokens: list[int], cache: list[Any]) -> None:
        """Keep ``cache`` for later prompts; ``tokens`` are the tokens it was fed, possibly
        one or two more (generation runs one step ahead): the cache's own length decides.
        A cache that went past ``tokens`` (decoded beyond a stop string found on the token
        thread) is trimmed back to them."""
        if not self.enabled or not cache:
            return
        held = _length(cache)
        if held > len(tokens) and can_trim_prompt_cache(cache):
            trim_prompt_cache(cache, held - len(tokens))
            held = _length(cache)
        if held <= 0 or held > len(tokens):
            return
        self._lru.insert_cache(self.model_key, list(tokens[:held]), cache)

    @property
    def model_key(self) -> str:
        return "model"

    def __len__(self) -> int:
        return len(self._lru)


def _length(cache: list[Any]) -> int:
    """Tokens held by a KV cache (every layer holds the same number)."""
    first = cache[0]
    offset = getattr(first, "offset", None)
    if isinstance(offset, int):
        return offset
    size = getattr(first, "size", None)
    return int(size()) if callable(size) else -1
