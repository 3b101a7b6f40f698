"""Ollama options: defaults, ``Options.FromMap`` typing rules, precedence (reference §2.3)."""

from __future__ import annotations

from typing import Any

import pytest

from daemon.options import OptionError, Options, resolve_options


def test_defaults() -> None:
    options = Options()
    assert (options.temperature, options.top_k, options.top_p, options.seed, options.num_predict) == (
        0.8,
        40,
        0.9,
        -1,
        -1,
    )
    assert options.num_ctx == 4096
    assert options.stop == []
    assert resolve_options(8192, None, None).num_ctx == 8192


def test_sampling_carries_every_generation_option() -> None:
    options = resolve_options(4096, None, {"num_keep": 2, "min_p": 0.1, "repeat_penalty": 1.2, "stop": ["x"]})
    assert options.sampling() == {
        "num_predict": -1,
        "temperature": 0.8,
        "top_p": 0.9,
        "top_k": 40,
        "seed": -1,
        "stop": ["x"],
        "num_ctx": 4096,
        "min_p": 0.1,
        "typical_p": 1.0,
        "repeat_penalty": 1.2,
        "repeat_last_n": 64,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "num_keep": 2,
    }
    load_time = {"num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict"}
    assert set(options.sampling()) == {f for f in vars(options) if f not in load_time}
    assert (options.num_keep, options.min_p, options.repeat_penalty) == (2, 0.1, 1.2)


def test_precedence_defaults_model_request() -> None:
    model = {"temperature": 0.5, "stop": ["<end>"], "top_k": 10}
    options = resolve_options(4096, model, {"temperature": 0.1, "stop": ["</s>", "END"]})
    assert options.temperature == 0.1  # request wins
    assert options.top_k == 10  # model beats the default
    assert options.stop == ["</s>", "END"]  # replaced, not merged
    assert options.top_p == 0.9  # default
    assert resolve_options(4096, model, {"num_ctx": 1024}).num_ctx == 1024


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("num_predict", 12, 12),
        ("num_predict", 12.9, 12),  # any number, truncated
        ("num_predict", -12.9, -12),
        ("seed", 1e30, (1 << 63) - 1),
        ("top_k", 3.0, 3),
        ("temperature", 1, 1.0),  # an integer literal is a number too
        ("temperature", 0.25, 0.25),
        ("use_mmap", True, True),
        ("main_gpu", 1, 1),
        ("stop", [], []),
        ("stop", ["a", "b"], ["a", "b"]),
    ],
)
def test_accepted_values(key: str, value: Any, expected: Any) -> None:
    options = Options()
    options.update({key: value})
    assert getattr(options, key) == expected
    assert type(getattr(options, key)) is type(expected)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num_predict", "12", 'option "num_predict" must be of type integer'),
        ("num_predict", True, 'option "num_predict" must be of type integer'),
        ("seed", [1], 'option "seed" must be of type integer'),
        ("temperature", "hot", 'option "temperature" must be of type float32'),
        ("temperature", False, 'option "temperature" must be of type float32'),
        ("top_p", {}, 'option "top_p" must be of type float32'),
        ("use_mmap", 1, 'option "use_mmap" must be of type boolean'),
        ("use_mmap", "true", 'option "use_mmap" must be of type boolean'),
        ("stop", "END", 'option "stop" must be of type array'),
        ("stop", ["a", 1], 'option "stop" must be of an array of strings'),
        ("stop", [None], 'option "stop" must be of an array of strings'),
    ],
)
def test_type_mismatch(key: str, value: Any, message: str) -> None:
    with pytest.raises(OptionError) as info:
        Options().update({key: value})
    assert str(info.value) == message


def test_null_and_unknown_are_ignored() -> None:
    options = Options()
    options.update(
        {
            "temperature": None,
            "stop": None,
            "numa": True,
            "low_vram": "x",
            "f16_kv": 1,
            "mirostat": 2,
            "tfs_z": "nope",
            "penalize_newline": [],
        }
    )
    assert options == Options()


def test_every_documented_option_is_accepted() -> None:
    names = [
        *("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread", "draft_num_predict"),
        *("num_keep", "seed", "num_predict", "top_k", "top_p", "min_p", "typical_p", "repeat_last_n"),
        *("temperature", "repeat_penalty", "presence_penalty", "frequency_penalty", "stop"),
    ]
    samples: dict[str, Any] = {"use_mmap": False, "stop": ["s"]}
    options = Options()
    options.update({name: samples.get(name, 3) for name in names})
    for name in names:
        assert getattr(options, name) == samples.get(name, 3)
