"""Build a Hugging Face fast tokenizer from the vocabulary stored in a GGUF file.

Two GGUF tokenizer models are supported:

* ``gpt2``: byte-level BPE; tokens and merges are stored exactly as in a Hugging Face
  ``tokenizer.json``. The pre-tokenizer regex is chosen from ``tokenizer.ggml.pre``.
* ``llama``: SentencePiece BPE with byte fallback (Llama 2, Gemma). GGUF keeps only the
  pieces and their scores, so the merges are rebuilt: SentencePiece merges the adjacent
  pair whose joined piece has the best score, which is what BPE merges ranked by that
  score do.

Also writes the small JSON files that ``transformers``/``mlx_lm`` read beside it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

log = logging.getLogger(__name__)

# GGUF token types (gguf.TokenType); spelled out so this module needs only the raw ints.
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre values grouped by the pre-tokenization llama.cpp applies for them.
_PRE_GPT2 = {"default", "gpt-2", "gpt2", "mpt", "olmo", "jais", "trillion"}
_PRE_DIGITS_GPT2 = {"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b"}
_PRE_LLAMA3 = {"llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral"}
_PRE_QWEN2 = {"qwen2", "deepseek-r1-qwen", "megrez"}

# Turn-ending tokens that chat templates emit; a generation should stop on them too.
_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")


@dataclass
class GGUFVocab:
    """The tokenizer part of GGUF metadata (``tokenizer.ggml.*`` and the chat template)."""

    model: str
    tokens: list[str]
    token_types: list[int]
    scores: list[float] = field(default_factory=list)
    merges: list[str] = field(default_factory=list)
    pre: str = "default"
    bos_id: int | None = None
    eos_id: int | None = None
    eot_id: int | None = None
    unk_id: int | None = None
    pad_id: int | None = None
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool = True
    chat_template: str | None = None

    def token(self, token_id: int | None) -> str | None:
        if token_id is None or not 0 <= token_id < len(self.tokens):
            return None
        return self.tokens[token_id]

    def eos_ids(self) -> list[int]:
        """eos, eot, and any control token that the chat template uses to end a turn."""
        ids = [i for i in (self.eos_id, self.eot_id) if i is not None]
        template = self.chat_template or ""
        index = {tok: i for i, tok in enumerate(self.tokens)}
        for text in _END_OF_TURN:
            tid = index.get(text)
            if tid is not None and text in template and self.token_types[tid] == TOKEN_CONTROL:
                ids.append(tid)
        return list(dict.fromkeys(ids))


def build_tokenizer(vocab: GGUFVocab) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` equivalent to the GGUF vocabulary. Raises ValueError."""
    if vocab.model == "gpt2":
        tok = _byte_level_bpe(vocab)
    elif vocab.model == "llama":
        tok = _sentencepiece_bpe(vocab)
    else:
        raise ValueError(f"unsupported GGUF tokenizer model: {vocab.model!r} (supported: gpt2, llama)")
    _add_special_tokens(tok, vocab)
    post = _post_processor(vocab, byte_level=vocab.model == "gpt2")
    if post is not None:
        tok.post_processor = post
    return tok


def _unique_vocab(tokens: Sequence[str]) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for i, text in enumerate(tokens):
        # A repeated piece can only map to one id in a BPE model; the first one wins.
        vocab.setdefault(text, i)
    if len(vocab) != len(tokens):
        log.warning("GGUF vocabulary has %d duplicate tokens", len(tokens) - len(vocab))
    return vocab


def _byte_level_bpe(vocab: GGUFVocab) -> Tokenizer:
    if not vocab.merges:
        raise ValueError("GGUF gpt2 tokenizer has no tokenizer.ggml.merges")
    merges: list[tuple[str, str]] = []
    for line in vocab.merges:
        left, _, right = line.partition(" ")
        merges.append((left, right))
    pre = vocab.pre
    ignore_merges = pre in _PRE_LLAMA3
    tok = Tokenizer(
        models.BPE(
            vocab=_unique_vocab(vocab.tokens), merges=merges, fuse_unk=False, ignore_merges=ignore_merges
        )
    )
    byte_level_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _PRE_DIGITS_GPT2:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level_regex]
        )
    elif pre in _PRE_LLAMA3 or pre in _PRE_QWEN2:
        pattern = _LLAMA3_SPLIT if pre in _PRE_LLAMA3 else _QWEN2_SPLIT
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    else:
        if pre not in _PRE_GPT2:
            # llama.cpp refuses unknown names; the GPT-2 split is the closest general default.
            log.warning("unknown GGUF pre-tokenizer %r: using the GPT-2 split", pre)
        tok.pre_tokenizer = byte_level_regex
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece_merges(vocab: GGUFVocab, index: dict[str, int]) -> list[tuple[str, str]]:
    """Rebuild BPE merges from SentencePiece scores: every split of a normal piece into two
    known pieces is a merge, ranked by the score of the joined piece (higher merges first)."""
    if len(vocab.scores) != len(vocab.tokens):
        raise ValueError("GGUF llama tokenizer has no usable tokenizer.ggml.scores")
    ranked: list[tuple[float, int, int, str, str]] = []
    for i, piece in enumerate(vocab.tokens):
        if vocab.token_types[i] not in (TOKEN_NORMAL, TOKEN_USER_DEFINED) or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in index and right in index:
                ranked.append((-vocab.scores[i], i, index[left], left, right))
    ranked.sort()
    return [(left, right) for _, _, _, left, right in ranked]


def _sentencepiece_bpe(vocab: GGUFVocab) -> Tokenizer:
    index = _unique_vocab(vocab.tokens)
    unk = vocab.token(vocab.unk_id)
    tok = Tokenizer(
        models.BPE(
            vocab=index,
            merges=_sentencepiece_merges(vocab, index),
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=True,
        )
    )
    steps: list[normalizers.Normalizer] = []
    if vocab.add_space_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    # The exact decoder shapes mlx_lm recognises as SentencePiece (streaming detokenizer).
    dec: list[decoders.Decoder] = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if vocab.add_space_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(dec)
    return tok


def _add_special_tokens(tok: Tokenizer, vocab: GGUFVocab) -> None:
    special: list[AddedToken] = []
    plain: list[AddedToken] = []
    for i, text in enumerate(vocab.tokens):
        kind = vocab.token_types[i] if i < len(vocab.token_types) else TOKEN_NORMAL
        if kind in (TOKEN_CONTROL, TOKEN_UNKNOWN):
            special.append(AddedToken(text, special=True, normalized=False))
        elif kind == TOKEN_USER_DEFINED:
            plain.append(AddedToken(text, special=False, normalized=False))
    for token_id in (vocab.bos_id, vocab.eos_id, vocab.eot_id, vocab.pad_id):
        content = vocab.token(token_id)
        if content is not None and all(content != t.content for t in special):
            special.append(AddedToken(content, special=True, normalized=False))
    tok.add_special_tokens(special)
    if plain:
        tok.add_tokens(plain)


def _post_processor(vocab: GGUFVocab, byte_level: bool) -> processors.PostProcessor | None:
    bos = vocab.token(vocab.bos_id) if vocab.add_bos else None
    eos = vocab.token(vocab.eos_id) if vocab.add_eos else None
    if bos is None and eos is None:
        return processors.ByteLevel(trim_offsets=False) if byte_level else None
    pieces: list[tuple[str, int]] = []
    single, pair = "$A:0", "$A:0 $B:1"
    if bos is not None and vocab.bos_id is not None:
        pieces.append((bos, vocab.bos_id))
        single, pair = f"{bos}:0 {single}", f"{bos}:0 $A:0 {bos}:1 $B:1"
    if eos is not None and vocab.eos_id is not None:
        pieces.append((eos, vocab.eos_id))
        single = f"{single} {eos}:0"
        pair = pair.replace("$A:0", f"$A:0 {eos}:0").replace("$B:1", f"$B:1 {eos}:1")
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(dict.fromkeys(pieces)))


def write_tokenizer_files(
    out_dir: Path,
    tokenizer: Tokenizer,
    *,
    bos_token: str | None,
    eos_token: str | None,
    eos_ids: Sequence[int],
    bos_id: int | None = None,
    unk_token: str | None = None,
    pad_token: str | None = None,
    pad_id: int | None = None,
    chat_template: str | None = None,
    model_max_length: int = 0,
    add_bos_token: bool = False,
) -> None:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and
    generation_config.json (the eos ids a generation stops on)."""
    tokenizer.save(str(out_dir / "tokenizer.json"))
    specials = {
        "bos_token": bos_token,
        "eos_token": eos_token,
        "unk_token": unk_token,
        "pad_token": pad_token,
    }
    specials_set = {k: v for k, v in specials.items() if v is not None}
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials_set,
        "add_bos_token": add_bos_token,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length or 1_000_000_000,
    }
    if chat_template:
        config["chat_template"] = chat_template
    _write_json(out_dir / "tokenizer_config.json", config)
    _write_json(out_dir / "special_tokens_map.json", specials_set)
    generation: dict[str, Any] = {"eos_token_id": list(eos_ids) if len(eos_ids) != 1 else eos_ids[0]}
    if bos_id is not None:
        generation["bos_token_id"] = bos_id
    if pad_id is not None:
        generation["pad_token_id"] = pad_id
    _write_json(out_dir / "generation_config.json", generation)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
