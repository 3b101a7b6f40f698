"""The MLX side of an embedding model: sentence vectors as sentence-transformers makes them.

A sentence-transformers directory says how its vectors are made: ``modules.json`` lists a
Transformer, a Pooling module (its ``1_Pooling/config.json`` picks CLS, mean, max… pooling)
and, for most models, a Normalize module; ``sentence_bert_config.json`` gives the longest
input (``max_seq_length``) and whether the text is lower-cased first. :class:`Encoder` does the
same steps with the BERT of :mod:`worker.bert` (or :mod:`worker.nomic_bert`), on batches of
inputs sorted by length.

On top of the model's own vectors, an ``embed`` command (``worker.protocol.EmbedCommand``)
gets Ollama's ``/api/embed`` treatment unless it asks otherwise: L2-normalize, cut to
``dimensions``, normalize again. Like the generator, everything runs on the worker's MLX
thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
import orjson
from mlx.utils import tree_flatten
from tokenizers import Encoding, Tokenizer

from worker import bert, nomic_bert, protocol
from worker.protocol import EmbedCommand, GenerateCommand, ModelInfo
from worker.transport import EventWriter

# Ollama's texts (reference §4.8, §11). A generative model asked for embeddings answers what
# Ollama's runner answers for a model without an embedding head, with its status.
TOO_LONG = "the input length exceeds the context length"
NOT_FINITE = "embedding contains NaN or Inf values"
CANNOT_TRUNCATE = "input after truncation exceeds maximum context length"
NO_EMBEDDINGS = "This server does not support embeddings. Start it with `--embeddings`"
NO_EMBEDDINGS_STATUS = 501
NO_GENERATION = "this model only supports embeddings"

POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len", "lasttoken")
ENCODER_TYPES = bert.ENCODER_TYPES | {nomic_bert.MODEL_TYPE}
_BATCH_TOKENS = 8192  # padded tokens in one forward pass
_NORMALIZE = "sentence_transformers.models.Normalize"
_POOLING = "sentence_transformers.models.Pooling"
_TRANSFORMER = "sentence_transformers.models.Transformer"


def is_encoder(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds a BERT-family encoder (by ``config.json``'s ``model_type``)."""
    config = _read_json(model_dir / "config.json")
    return str(config.get("model_type", "")) in ENCODER_TYPES


@dataclass(frozen=True)
class Pipeline:
    """The sentence-transformers modules after the transformer."""

    pooling: tuple[str, ...] = ("mean",)
    normalize: bool = False
    lowercase: bool = False
    max_seq_length: int = 0  # 0: the model's own limit

    @classmethod
    def read(cls, model_dir: Path) -> Pipeline:
        """The pipeline of a sentence-transformers directory; mean pooling without
        normalization for a plain transformers one (what sentence-transformers would build)."""
        st_config = _read_json(model_dir / "sentence_bert_config.json")
        modules = _read_json_list(model_dir / "modules.json")
        pooling: tuple[str, ...] = ("mean",)
        normalize = False
        for module in modules:
            kind = str(module.get("type", ""))
            if kind == _POOLING:
                pooling = pooling_modes(_read_json(model_dir / str(module.get("path", "")) / "config.json"))
            elif kind == _NORMALIZE:
                normalize = True
            elif kind != _TRANSFORMER:
                raise bert.UnsupportedModel(f"unsupported sentence-transformers module {kind!r}")
        return cls(
            pooling=pooling,
            normalize=normalize,
            lowercase=bool(st_config.get("do_lower_case", False)),
            max_seq_length=int(st_config.get("max_seq_length") or 0),
        )


def pooling_modes(config: dict[str, Any]) -> tuple[str, ...]:
    """The modes a ``1_Pooling/config.json`` turns on, in sentence-transformers' order (their
    outputs are concatenated); mean when it names none."""
    if isinstance(config.get("pooling_mode"), str):  # the newer spelling
        mode = str(config["pooling_mode"]).replace("_tokens", "").replace("_token", "")
        chosen = [mode]
    else:
        keys = {
            "cls": "pooling_mode_cls_token",
            "max": "pooling_mode_max_tokens",
            "mean": "pooling_mode_mean_tokens",
            "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
            "weightedmean": "pooling_mode_weightedmean_tokens",
            "lasttoken": "pooling_mode_lasttoken",
        }
        chosen = [mode for mode, key in keys.items() if config.get(key)]
    for mode in chosen:
        if mode not in POOLING_MODES:
            raise bert.UnsupportedModel(f"unsupported pooling mode {mode!r}")
    return tuple(chosen) or ("mean",)


def pool(states: mx.array, mask: mx.array, modes: Sequence[str]) -> mx.array:
    """``[batch, length, hidden]`` token states → ``[batch, hidden × len(modes)]``, each mode
    computed as sentence-transformers' Pooling module does (padding never counts)."""
    mask_f = mask.astype(mx.float32)[..., None]
    states = states.astype(mx.float32)
    lengths = mx.maximum(mask_f.sum(axis=1), 1e-9)
    out = []
    for mode in modes:
        if mode == "cls":
            out.append(states[:, 0])
        elif mode == "max":
            out.append(mx.where(mask_f > 0, states, mx.array(-1e9, mx.float32)).max(axis=1))
        elif mode == "mean":
            out.append((states * mask_f).sum(axis=1) / lengths)
        elif mode == "mean_sqrt_len":
            out.append((states * mask_f).sum(axis=1) / mx.sqrt(lengths))
        elif mode == "lasttoken":  # right padding: the last real token
            last = mask.astype(mx.int32).sum(axis=1) - 1
            out.append(mx.take_along_axis(states, last[:, None, None], axis=1)[:, 0])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return out[0] if len(out) == 1 else mx.concatenate(out, axis=-1)


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), as Ollama's ``normalize``."""
    norms = np.sqrt(np.sum(vectors.astype(np.float64) ** 2, axis=1, keepdims=True))
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def finish(vectors: np.ndarray, normalize: bool, dimensions: int) -> np.ndarray:
    """Ollama's ``/api/embed`` steps over the model's vectors: normalize; with
    0 < ``dimensions`` < the length, cut and normalize again. Raises ValueError on NaN/Inf."""
    if not np.all(np.isfinite(vectors)):
        raise ValueError(NOT_FINITE)
    if not normalize:
        return vectors
    vectors = l2_normalize(vectors)
    if 0 < dimensions < vectors.shape[1]:
        vectors = l2_normalize(vectors[:, :dimensions])
    return vectors


class InputTooLong(ValueError):
    pass


class Encoder:
    """A loaded encoder, its tokenizer and its pooling; embeds one command at a time."""

    def __init__(self, model_dir: Path) -> None:
        started = time.perf_counter()
        config = _read_json(model_dir / "config.json")
        self.pipeline = Pipeline.read(model_dir)
        weights: dict[str, mx.array] = {}
        files = sorted(model_dir.glob("*.safetensors"))
        if not files:
            raise bert.UnsupportedModel(f"no .safetensors weights in {model_dir}")
        for file in files:
            weights.update(mx.load(str(file)))  # type: ignore[arg-type]
        build = nomic_bert.build if config.get("model_type") == nomic_bert.MODEL_TYPE else bert.build
        self.model: bert.BertModel | nomic_bert.NomicBertModel = build(
            config, weights, float32=mx.default_device() == mx.cpu
        )
        mx.eval(self.model.parameters())
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        # tokenizer.json may carry the padding and truncation of its export: lengths are ours.
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.max_tokens = self._max_tokens(model_dir)
        self.dim = int(self.embed(["warm-up"])[0].shape[1])  # also compiles the kernels
        self.load_seconds = time.perf_counter() - started

    def _max_tokens(self, model_dir: Path) -> int:
        """sentence-transformers' limit: ``max_seq_length``, else the tokenizer's
        ``model_max_length``; never more than the position table holds."""
        limit = self.model.config.max_tokens
        wanted = self.pipeline.max_seq_length
        if not wanted:
            tokenizer_config = _read_json(model_dir / "tokenizer_config.json")
            wanted = int(tokenizer_config.get("model_max_length") or 0)
        return min(wanted, limit) if wanted > 0 else limit

    def info(self) -> ModelInfo:
        params: list[tuple[str, mx.array]] = tree_flatten(self.model.parameters())  # type: ignore[assignment]
        return {
            "load_seconds": self.load_seconds,
            "context_length": self.max_tokens,
            "vocab_size": self.tokenizer.get_vocab_size(),
            "eos_token_ids": [],
            "memory_bytes": int(sum(v.nbytes for _, v in params)),
            "device": str(mx.default_device()),
            "kind": "encoder",
            "embedding_length": int(self.dim),
        }

    def tokenize(self, texts: Sequence[str], truncate: bool, limit: int) -> list[Encoding]:
        """Token ids of each text, special tokens included; over ``limit`` they are cut as
        sentence-transformers cuts them (the special tokens stay) or, without ``truncate``,
        raise :class:`InputTooLong`."""
        if self.pipeline.lowercase:
            texts = [text.lower() for text in texts]
        encodings: list[Encoding] = self.tokenizer.encode_batch(list(texts))
        long = [i for i, encoding in enumerate(encodings) if len(encoding.ids) > limit]
        if long and not truncate:
            raise InputTooLong(TOO_LONG)
        if long:
            self.tokenizer.enable_truncation(max_length=limit)
            try:
                cut = self.tokenizer.encode_batch([texts[i] for i in long])
            finally:
                self.tokenizer.no_truncation()
            for i, encoding in zip(long, cut, strict=True):
                if len(encoding.ids) > limit:  # the limit cannot even hold the special tokens
                    raise ValueError(CANNOT_TRUNCATE)
                encodings[i] = encoding
        return encodings

    def embed(self, texts: Sequence[str], truncate: bool = True, limit: int = 0) -> tuple[np.ndarray, int]:
        """The model's sentence vectors of ``texts`` (``[len(texts), dim]`` float32) and the
        number of tokens embedded; ``limit`` > 0 lowers the model's token limit."""
        limit = min(limit, self.max_tokens) if limit > 0 else self.max_tokens
        encodings = self.tokenize(texts, truncate, limit)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        out: list[np.ndarray | None] = [None] * len(encodings)
        start = 0
        while start < len(order):
            # Sorted by length: a batch grows while its padded size stays in budget.
            end = start + 1
            while end < len(order) and (end + 1 - start) * len(encodings[order[end]].ids) <= _BATCH_TOKENS:
                end += 1
            batch = [encodings[i] for i in order[start:end]]
            for i, vector in zip(order[start:end], self._forward(batch), strict=True):
                out[i] = vector
            start = end
        tokens = sum(len(encoding.ids) for encoding in encodings)
        return np.stack([v for v in out if v is not None]), tokens

    def _forward(self, batch: list[Encoding]) -> np.ndarray:
        length = max(len(encoding.ids) for encoding in batch)
        pad = self.model.config.pad_token_id
        ids = np.full((len(batch), length), pad, dtype=np.int32)
        types = np.zeros((len(batch), length), dtype=np.int32)
        mask = np.zeros((len(batch), length), dtype=np.int32)
        for row, encoding in enumerate(batch):
            n = len(encoding.ids)
            ids[row, :n] = encoding.ids
            types[row, :n] = encoding.type_ids
            mask[row, :n] = 1
        ids_mx, mask_mx = mx.array(ids), mx.array(mask)
        states = self.model(ids_mx, mask_mx, mx.array(types))
        vectors = pool(states, mask_mx, self.pipeline.pooling)
        if self.pipeline.normalize:
            vectors = vectors / mx.maximum(mx.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        mx.eval(vectors)
        return np.array(vectors, dtype=np.float32)

    def run(self, command: EmbedCommand, writer: EventWriter) -> None:
        """Answer one embed command with a vectors event, or an error event."""
        request_id = command.get("id", 0)
        try:
            vectors, tokens = self.embed(
                command.get("inputs", []), command.get("truncate", True), command.get("num_ctx", 0)
            )
            vectors = finish(vectors, command.get("normalize", True), command.get("dimensions", 0))
        except ValueError as exc:  # too long, NaN/Inf: the client's 400
            writer.send(protocol.error(request_id, str(exc), 400))
        else:
            payload = np.ascontiguousarray(vectors, dtype="<f4").tobytes()
            writer.send(protocol.vectors(request_id, payload, int(vectors.shape[1]), tokens))
        writer.flush()


def serve(runner: object, job: GenerateCommand | EmbedCommand, writer: EventWriter) -> None:
    """Run an embed job on an encoder; answer what the loaded model cannot do (embeddings
    from a generative model, text from an encoder) with Ollama's error."""
    if isinstance(runner, Encoder) and job.get("op") == "embed":
        runner.run(job, writer)  # type: ignore[arg-type]
        return
    if isinstance(runner, Encoder):
        message, status = NO_GENERATION, 400
    else:
        message, status = NO_EMBEDDINGS, NO_EMBEDDINGS_STATUS
    writer.send(protocol.error(job.get("id", 0), message, status))
    writer.flush()


def _load(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None


def _read_json(path: Path) -> dict[str, Any]:
    data = _load(path)
    return data if isinstance(data, dict) else {}


def _read_json_list(path: Path) -> list[dict[str, Any]]:
    data = _load(path)
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
