"""What a model can do at request time: ``tools``, ``thinking``, ``insert`` (reference §2.10).

A Modelfile ``TEMPLATE`` (an Ollama Go template) decides for the model, as in Ollama: the
template's variables ``.Tools``, ``.Think``/``.Thinking`` and ``.Suffix``. Without one, the
tokenizer's chat template does: ``tools`` when it takes tools and writes a tool-call
marker the worker can parse, ``thinking`` when it has reasoning tags; ``insert`` when the
vocabulary has fill-in-the-middle tokens. The capabilities stored with the model are kept.
Results are cached per model digest: the files behind a digest never change.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import orjson

from registry.store import InstalledModel
from worker.gotemplate import Template, TemplateError
from worker.prompt import FIM_TOKENS

# Tool-call markers of the chat templates whose output mlx-lm's tool parsers read.
_TOOL_MARKERS = (
    "<tool_call>",
    "<|tool_call>",
    "<|tool_call_start|>",
    "<|tool_list_start|>",
    "<minimax:tool_call>",
    "<start_function_call>",
    "<longcat_tool_call>",
    "<|tool_calls_section_begin|>",
    "[TOOL_CALLS]",
    '<function name="',
    "<atem:function_calls>",
    "<arg_key>",
)
_THINK_PAIRS = (("<think>", "</think>"), ("<longcat_think>", "</longcat_think>"))
_TOOLS_VAR = re.compile(r"\btools\b")


def capabilities(model: InstalledModel) -> list[str]:
    """The stored capabilities plus those the templates show, in Ollama's order."""
    found = set(model.config.capabilities)
    found |= _derived(model.digest, model.config.template, model.path)
    order = ("completion", "tools", "insert", "vision", "embedding", "thinking")
    return [name for name in order if name in found] + sorted(found - set(order))


@functools.lru_cache(maxsize=64)
def _derived(digest: str, go_template: str, path: Path) -> frozenset[str]:
    if go_template:
        try:
            names = Template(go_template).vars
        except TemplateError:
            return frozenset()
        derived = set()
        if "Tools" in names:
            derived.add("tools")
        if names & {"Think", "Thinking", "ThinkLevel"}:
            derived.add("thinking")
        if "Suffix" in names:
            derived.add("insert")
        return frozenset(derived)
    config = _read_json(path / "tokenizer_config.json")
    template = _chat_template(config)
    derived = set()
    if _TOOLS_VAR.search(template) and (
        any(marker in template for marker in _TOOL_MARKERS) or config.get("tool_parser_type")
    ):
        derived.add("tools")
    if any(start in template and end in template for start, end in _THINK_PAIRS):
        derived.add("thinking")
    if _has_fim_tokens(path, config):
        derived.add("insert")
    return frozenset(derived)


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _chat_template(config: dict[str, object]) -> str:
    template = config.get("chat_template")
    if isinstance(template, list):
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else ""


def _has_fim_tokens(path: Path, config: dict[str, object]) -> bool:
    names: set[str] = set()
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, dict):
        names |= {str(t.get("content")) for t in decoder.values() if isinstance(t, dict)}
    tokenizer = _read_json(path / "tokenizer.json")
    added = tokenizer.get("added_tokens")
    if isinstance(added, list):
        names |= {str(t.get("content")) for t in added if isinstance(t, dict)}
    return any(all(token in names for token in triple) for triple in FIM_TOKENS)
