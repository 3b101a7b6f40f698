"""The create pipeline: sources (installed model, MLX directory, GGUF), progress, errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import registry.create as create_mod
from registry.create import CreateError, CreateRequest, create_model, create_request_from_modelfile
from registry.modelfile import ModelfileError
from registry.names import ModelName, parse_name
from registry.store import ModelConfig, Store
from tests.test_store import make_model_dir


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "home")


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return make_model_dir(tmp_path / "src")


FAKE_DETAILS = {
    "family": "qwen2",
    "parameter_count": 494032768,
    "parameter_size": "494.03M",
    "quantization_level": "Q4_0",
    "context_length": 32768,
    "embedding_length": 896,
}


@pytest.fixture
def fake_describe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(create_mod, "_describe", lambda path: dict(FAKE_DETAILS))


def statuses(items: Iterator[dict[str, Any]]) -> list[str]:
    return [item["status"] for item in items]


def test_from_directory(store: Store, src: Path, fake_describe: None) -> None:
    req = CreateRequest(
        model="Mine:v1",
        from_=str(src),
        system="be brief",
        parameters={"temperature": 0.2, "stop": ["<|im_end|>"]},
        license=["MIT"],
    )
    got = statuses(create_model(store, req))
    assert [s.split(" sha256:")[0] for s in got] == ["creating new layer"] * 4 + [
        "writing manifest",
        "success",
    ]
    assert all(len(s.split("sha256:")[1]) == 64 for s in got[:4])

    model = store.resolve("mine:V1")
    assert model is not None
    assert model.display == "Mine:v1"
    cfg = model.config
    assert (cfg.system, cfg.parameters, cfg.license, cfg.parent_model) == (
        "be brief",
        {"temperature": 0.2, "stop": ["<|im_end|>"]},
        ["MIT"],
        "",
    )
    assert (cfg.format, cfg.family, cfg.families) == ("mlx", "qwen2", ["qwen2"])
    assert (cfg.parameter_size, cfg.quantization_level) == ("494.03M", "Q4_0")
    assert (cfg.context_length, cfg.embedding_length) == (32768, 896)
    assert cfg.capabilities == ["completion"]
    assert cfg.model_info == {
        "general.architecture": "qwen2",
        "general.parameter_count": 494032768,
        "qwen2.context_length": 32768,
        "qwen2.embedding_length": 896,
    }
    assert (model.path / "config.json").read_bytes() == (src / "config.json").read_bytes()

    # The same files again: every layer already exists.
    again = statuses(create_model(store, CreateRequest(model="other", from_=str(src))))
    assert [s.split(" sha256:")[0] for s in again[:4]] == ["using existing layer"] * 4


def test_from_directory_with_real_details(store: Store, tmp_path: Path) -> None:
    tiny = pytest.importorskip("registry.tiny_model")
    pytest.importorskip("registry.model_dir")
    tiny.write_tiny_model(tmp_path / "tiny")
    list(create_model(store, CreateRequest(model="tiny", from_=str(tmp_path / "tiny"))))
    model = store.resolve("tiny")
    assert model is not None
    assert model.config.family == "qwen2"
    assert model.config.parameter_size
    assert model.config.model_info["general.architecture"] == "qwen2"
    assert model.config.model_info["general.parameter_count"] > 0


def test_from_installed_model(store: Store, src: Path, fake_describe: None) -> None:
    base_req = CreateRequest(
        model="base",
        from_=str(src),
        template="{{ .Prompt }}",
        system="base system",
        parameters={"temperature": 0.5, "top_k": 10},
        messages=[{"role": "user", "content": "hi"}],
        license=["MIT"],
    )
    list(create_model(store, base_req))
    base = store.resolve("base")
    assert base is not None

    req = CreateRequest(
        model="user/derived:fast",
        from_="BASE",  # case-insensitive, like every lookup
        system="derived system",
        parameters={"temperature": 0.1},
        license=["extra"],
    )
    got = statuses(create_model(store, req))
    assert got == [f"using existing layer {layer.digest}" for layer in base.layers] + [
        "writing manifest",
        "success",
    ]
    derived = store.resolve("user/derived:fast")
    assert derived is not None
    cfg = derived.config
    assert cfg.template == "{{ .Prompt }}"  # inherited: the request left it empty
    assert cfg.system == "derived system"
    assert cfg.parameters == {"temperature": 0.1, "top_k": 10}
    assert cfg.messages == [{"role": "user", "content": "hi"}]
    assert cfg.license == ["MIT", "extra"]
    assert cfg.parent_model == "base:latest"
    assert cfg.family == "qwen2"
    assert [layer.digest for layer in derived.layers] == [layer.digest for layer in base.layers]

    messages = [{"role": "Assistant", "content": "new"}]
    list(create_model(store, CreateRequest(model="m2", from_="base", messages=messages)))
    m2 = store.resolve("m2")
    assert m2 is not None and m2.config.messages == [{"role": "assistant", "content": "new"}]


def test_replacing_a_tag_collects_old_files(store: Store, tmp_path: Path, fake_describe: None) -> None:
    a = make_model_dir(tmp_path / "a", seed=1)
    b = make_model_dir(tmp_path / "b", seed=2)
    list(create_model(store, CreateRequest(model="m", from_=str(a))))
    first = store.resolve("m")
    assert first is not None
    list(create_model(store, CreateRequest(model="m", from_=str(b))))
    weights = next(layer for layer in first.layers if layer.filename == "model.safetensors")
    assert not store.has_blob(weights.digest)


def _first_error(store: Store, req: CreateRequest, **kwargs: Any) -> CreateError:
    gen = create_model(store, req, **kwargs)
    with pytest.raises(CreateError) as exc:
        next(gen)  # raised before any progress object
    return exc.value


@pytest.mark.parametrize(
    ("model", "params", "message"),
    [
        ("", {}, "invalid model name"),
        ("bad:", {}, "invalid model name"),
        ("ok", {"temperature": "hot"}, "invalid float value 'hot' for parameter 'temperature'"),
        ("ok", {"bogus": 1}, "unknown parameter 'bogus'"),
        ("ok", {"stop": [1]}, 'option "stop" must be of an array of strings'),
    ],
)
def test_validation_errors(store: Store, src: Path, model: str, params: dict[str, Any], message: str) -> None:
    err = _first_error(store, CreateRequest(model=model, from_=str(src), parameters=params))
    assert (err.status, err.message) == (400, message)
    assert store.list() == []


def test_source_errors(store: Store, tmp_path: Path) -> None:
    def check(source: str, message: str) -> None:
        err = _first_error(store, CreateRequest(model="ok", from_=source))
        assert err.status == 400
        assert err.message == message

    check("", "neither 'from' or 'files' was specified")
    check("  ", "neither 'from' or 'files' was specified")
    check("llama3.2", 'model "llama3.2" not found')
    check("not a name", "invalid model name")
    check(str(tmp_path / "missing"), f'no such file or directory: "{tmp_path / "missing"}"')
    (tmp_path / "empty").mkdir()
    check(
        str(tmp_path / "empty"),
        f'"{tmp_path / "empty"}" is not an MLX model directory: it has no config.json',
    )
    (tmp_path / "weights.gguf").write_bytes(b"PK\x03\x04 not gguf")
    check(str(tmp_path / "weights.gguf"), "supplied file was not in GGUF format")
    err = _first_error(
        store, CreateRequest(model="ok", from_="x", messages=[{"role": "robot", "content": "x"}])
    )
    assert err.message == 'invalid message role "robot"'
    assert not (store.home / "manifests").exists()


def test_home_expanded(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_describe: None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    make_model_dir(tmp_path / "models" / "mine")
    list(create_model(store, CreateRequest(model="m", from_="~/models/mine")))
    assert store.resolve("m") is not None


def _fake_converter(fail: bool = False) -> Callable[[Path, Path, Callable[[str], None] | None], None]:
    def convert(gguf: Path, out: Path, progress: Callable[[str], None] | None = None) -> None:
        assert progress is not None
        progress("parsing GGUF")
        progress("converting tokenizer")
        make_model_dir(out)
        progress("writing config")
        if fail:
            raise ValueError("unsupported GGUF architecture: bert")

    return convert


def test_from_gguf(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_describe: None
) -> None:
    gguf_import = pytest.importorskip("registry.gguf_import")
    monkeypatch.setattr(gguf_import, "convert_gguf", _fake_converter())
    gguf = tmp_path / "model.Q4_0.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * 60)
    got = statuses(create_model(store, CreateRequest(model="from-gguf", from_=str(gguf))))
    assert got[:4] == ["parsing GGUF", "converting model", "converting tokenizer", "writing config"]
    assert [s.split(" sha256:")[0] for s in got[4:]] == ["creating new layer"] * 4 + [
        "writing manifest",
        "success",
    ]
    model = store.resolve("from-gguf")
    assert model is not None
    assert json.loads((model.path / "config.json").read_text())["model_type"] == "qwen2"
    assert model.config.format == "mlx"
    assert list((store.home / "tmp").iterdir()) == []


def test_from_gguf_failure(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf_import = pytest.importorskip("registry.gguf_import")
    monkeypatch.setattr(gguf_import, "convert_gguf", _fake_converter(fail=True))
    gguf = tmp_path / "bert.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * 60)
    gen = create_model(store, CreateRequest(model="x", from_=str(gguf)))
    assert next(gen) == {"status": "parsing GGUF"}
    with pytest.raises(CreateError) as exc:
        list(gen)
    assert exc.value.message == "converting bert.gguf: unsupported GGUF architecture: bert"
    assert store.list() == []
    assert list((store.home / "tmp").iterdir()) == []


def test_pull_hook(store: Store, src: Path, fake_describe: None) -> None:
    pulled: list[ModelName] = []

    def pull(name: ModelName) -> Iterator[dict[str, Any]]:
        pulled.append(name)
        yield {"status": "pulling manifest"}
        store.create(name, src, ModelConfig(family="qwen2"))

    got = statuses(create_model(store, CreateRequest(model="mine", from_="remote/model:7b"), pull=pull))
    assert pulled == [parse_name("remote/model:7b")]
    assert got[0] == "pulling manifest" and got[-1] == "success"
    mine = store.resolve("mine")
    assert mine is not None and mine.config.parent_model == "remote/model:7b"


def test_abandoned_create_releases_the_lock(store: Store, src: Path, fake_describe: None) -> None:
    gen = create_model(store, CreateRequest(model="m", from_=str(src)))
    next(gen)  # one blob written, lock held
    assert store.gc() == 0
    gen.close()
    assert store.gc() == 1  # the orphan blob
    assert store.list() == []


# -- Modelfiles ---------------------------------------------------------------------------


def test_request_from_modelfile(tmp_path: Path) -> None:
    make_model_dir(tmp_path / "weights")
    text = 'FROM ./weights\nPARAMETER temperature 0.3\nPARAMETER stop "<|im_end|>"\nSYSTEM """hi\nthere"""\n'
    req = create_request_from_modelfile("mine", text, tmp_path)
    assert req.model == "mine"
    assert req.from_ == str(tmp_path / "weights")
    assert req.parameters == {"temperature": 0.3, "stop": ["<|im_end|>"]}
    assert req.system == "hi\nthere"

    assert create_request_from_modelfile("m", "FROM weights", tmp_path).from_ == str(tmp_path / "weights")
    assert create_request_from_modelfile("m", "FROM llama3.2", tmp_path).from_ == "llama3.2"
    assert create_request_from_modelfile("m", "FROM /abs/x.gguf", tmp_path).from_ == "/abs/x.gguf"
    assert create_request_from_modelfile("m", "FROM ./nope", tmp_path).from_ == str(tmp_path / "nope")
    with pytest.raises(ModelfileError):
        create_request_from_modelfile("m", "SYSTEM x", tmp_path)


def test_modelfile_end_to_end(store: Store, tmp_path: Path, fake_describe: None) -> None:
    make_model_dir(tmp_path / "weights")
    text = "FROM ./weights\nPARAMETER num_ctx 2048\nMESSAGE user hello\nLICENSE Apache-2.0\n"
    list(create_model(store, create_request_from_modelfile("mf", text, tmp_path)))
    model = store.resolve("mf")
    assert model is not None
    assert model.config.parameters == {"num_ctx": 2048}
    assert model.config.messages == [{"role": "user", "content": "hello"}]
    assert model.config.license == ["Apache-2.0"]
