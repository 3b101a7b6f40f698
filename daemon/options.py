"""Ollama's generation options (reference §2.3): defaults, ``Options.FromMap`` typing, precedence.

Precedence is defaults → the model's Modelfile ``PARAMETER``s → the request's ``options``.
Every option Ollama knows is accepted with its type rules; the generation options travel on
in :class:`~worker.protocol.SamplingOptions`, the load-time ones (``num_batch``, ``num_gpu``,
``main_gpu``, ``use_mmap``, ``num_thread``, ``draft_num_predict``) have no MLX equivalent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from worker.protocol import SamplingOptions

_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


class OptionError(ValueError):
    """An option has the wrong JSON type (Ollama answers 500 with this message)."""


@dataclass
class Options:
    # runner (load-time) options
    num_ctx: int = 4096
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int | None = None
    use_mmap: bool | None = None
    num_thread: int = 0
    draft_num_predict: int = 0
    # sampling / prediction options
    num_keep: int = 4
    seed: int = -1
    num_predict: int = -1
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_last_n: int = 64
    temperature: float = 0.8
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: list[str] = field(default_factory=list)

    def update(self, values: Mapping[str, Any] | None) -> None:
        """Apply a JSON options map with ``Options.FromMap``'s rules; raise :class:`OptionError`.

        Unknown keys and ``null`` values are ignored; int options take any number (truncated);
        float options need a number; bool options need a bool; ``stop`` needs an array of strings.
        """
        if not values:
            return
        for key, value in values.items():
            kind = _KINDS.get(key)
            if kind is None or value is None:
                continue
            setattr(self, key, _convert(key, kind, value))

    def sampling(self) -> SamplingOptions:
        """The options that shape a generation (all but the load-time ones)."""
        return SamplingOptions(
            num_predict=self.num_predict,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=list(self.stop),
            num_ctx=self.num_ctx,
            min_p=self.min_p,
            typical_p=self.typical_p,
            repeat_penalty=self.repeat_penalty,
            repeat_last_n=self.repeat_last_n,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            num_keep=self.num_keep,
        )


# The JSON type each option takes, named as Go's error messages name it.
_INTEGERS = "num_ctx num_batch num_gpu main_gpu num_thread draft_num_predict num_keep seed num_predict top_k"
_FLOATS = "top_p min_p typical_p temperature repeat_penalty presence_penalty frequency_penalty"
_KINDS: dict[str, str] = {
    **dict.fromkeys([*_INTEGERS.split(), "repeat_last_n"], "integer"),
    **dict.fromkeys(_FLOATS.split(), "float32"),
    "use_mmap": "boolean",
    "stop": "array",
}
assert set(_KINDS) == {f.name for f in fields(Options)}


def _convert(key: str, kind: str, value: Any) -> Any:
    is_bool = isinstance(value, bool)
    if kind == "integer":
        if is_bool or not isinstance(value, int | float):
            raise OptionError(f'option "{key}" must be of type integer')
        return max(_INT64_MIN, min(_INT64_MAX, int(value)))
    if kind == "float32":
        if is_bool or not isinstance(value, int | float):
            raise OptionError(f'option "{key}" must be of type float32')
        return float(value)
    if kind == "boolean":
        if not is_bool:
            raise OptionError(f'option "{key}" must be of type boolean')
        return value
    if not isinstance(value, list):
        raise OptionError(f'option "{key}" must be of type array')
    if not all(isinstance(item, str) for item in value):
        raise OptionError(f'option "{key}" must be of an array of strings')
    return list(value)


def resolve_options(
    context_length: int, model_parameters: Mapping[str, Any] | None, request_options: Mapping[str, Any] | None
) -> Options:
    """Defaults (``num_ctx`` from the settings) → model parameters → request options."""
    options = Options(num_ctx=context_length)
    options.update(model_parameters)
    options.update(request_options)
    return options
