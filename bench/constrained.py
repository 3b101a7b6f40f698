"""Constrained decoding libraries: grammar setup and per-token cost on a model's vocabulary.

    python -m bench.constrained MODEL_DIR [MODEL_DIR ...]

For each model directory (its Hugging Face tokenizer) and a JSON Schema, walks the tokens of
a document that matches the schema: per token, compute the allowed-token mask, then consume
the token. Measures llguidance (the library ``worker/constrained.py`` uses, including the
bitmask → MLX boolean array step the worker adds) and, when importable, outlines-core.
xgrammar is reported as unavailable when its Python package cannot import without PyTorch.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "temperature": {"type": "integer", "minimum": -50, "maximum": 60},
        "sky": {"enum": ["clear", "cloudy", "rain"]},
        "hours": {"type": "array", "items": {"type": "number"}, "maxItems": 8},
    },
    "required": ["city", "temperature", "sky", "hours"],
    "additionalProperties": False,
}
DOCUMENT = '{"city":"Paris is the capital of France","temperature":21,"sky":"cloudy","hours":[1.5,2,3.25,4]}'


def _ms(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": statistics.median(samples) * 1e3, "mean_ms": statistics.fmean(samples) * 1e3}


def bench_llguidance(tokenizer: Any, tokens: list[int], vocab_size: int, eos: list[int]) -> dict[str, Any]:
    import llguidance
    import llguidance.hf
    import mlx.core as mx
    from llguidance.numpy import fill_next_token_bitmask

    started = time.perf_counter()
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
    tokenizer_s = time.perf_counter() - started
    started = time.perf_counter()
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False})
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
    setup_s = time.perf_counter() - started
    mask = np.zeros((1, (vocab_size + 31) // 32), dtype=np.int32)
    per_token: list[float] = []
    with_mlx: list[float] = []
    for token in tokens:
        started = time.perf_counter()
        fill_next_token_bitmask(matcher, mask, 0)
        assert (mask[0, token // 32] >> (token % 32)) & 1, "the document left the grammar"
        matcher.consume_token(token)
        mid = time.perf_counter()
        bits = np.unpackbits(mask.view(np.uint8), bitorder="little")[:vocab_size]
        mx.eval(mx.array(bits.astype(np.bool_)))
        per_token.append(mid - started)
        with_mlx.append(time.perf_counter() - started)
    return {
        "version": llguidance.__version__,
        "tokenizer_setup_s": round(tokenizer_s, 3),
        "schema_setup_ms": setup_s * 1e3,
        "mask_and_consume": _ms(per_token),
        "with_mlx_mask": _ms(with_mlx),
    }


def bench_outlines(tokenizer: Any, tokens: list[int], eos: int) -> dict[str, Any]:
    try:
        from outlines_core import Guide, Index, Vocabulary
        from outlines_core.json_schema import build_regex_from_schema
    except ImportError as exc:
        return {"unavailable": str(exc)}
    vocab: dict[str, list[int]] = {}
    for token, token_id in tokenizer.get_vocab().items():
        if token_id != eos:
            vocab.setdefault(token, []).append(token_id)
    started = time.perf_counter()
    regex = build_regex_from_schema(orjson.dumps(SCHEMA).decode())
    index = Index(regex, Vocabulary(eos, vocab))
    setup_s = time.perf_counter() - started
    guide = Guide(index)
    per_token: list[float] = []
    for token in tokens:
        started = time.perf_counter()
        allowed = guide.get_tokens()
        assert token in allowed
        guide.advance(token)
        per_token.append(time.perf_counter() - started)
    return {"schema_setup_ms": setup_s * 1e3, "mask_and_consume": _ms(per_token)}


def bench_xgrammar() -> dict[str, Any]:
    try:
        import xgrammar
    except Exception as exc:  # its package imports torch at import time
        return {"unavailable": f"{type(exc).__name__}: {exc}"}
    return {"version": xgrammar.__version__, "note": "importable; not measured"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.constrained")
    parser.add_argument("models", nargs="+", type=Path, help="model directories (tokenizer files)")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    results: dict[str, Any] = {"schema": SCHEMA, "document_chars": len(DOCUMENT), "models": {}}
    for path in args.models:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        config = orjson.loads((path / "config.json").read_bytes())
        vocab_size = int(config.get("vocab_size") or len(tokenizer))
        eos = int(tokenizer.eos_token_id)
        tokens = list(tokenizer.encode(DOCUMENT, add_special_tokens=False))
        results["models"][path.name] = {
            "vocab_size": vocab_size,
            "document_tokens": len(tokens),
            "llguidance": bench_llguidance(tokenizer, tokens, vocab_size, [eos]),
            "outlines_core": bench_outlines(tokenizer, tokens, eos),
        }
    results["xgrammar"] = bench_xgrammar()
    sys.stdout.write(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
