"""From a generate command to prompt tokens, as Ollama builds its prompts.

Four ways in: ``raw`` text as is; a fill-in-the-middle request (``suffix``); an Ollama (Go)
template (a Modelfile ``TEMPLATE`` or the request's ``template``); or the tokenizer's own
chat template with the request's ``tools`` and thinking switch. Conversations that do not
fit ``num_ctx`` lose their oldest messages first, keeping the system messages and the last
message (Ollama's ``chatPrompt``); with ``truncate: false`` that is an error instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from worker.gotemplate import Template, TemplateError
from worker.protocol import ChatMessage, GenerateCommand

PROMPT_TOO_LONG = (
    "the prompt is longer than the context length currently available to the model; "
    "shorten the prompt, adjust the context length in settings, or use a model with a longer context length"
)

# Fill-in-the-middle token triples (prefix, suffix, middle) of common code models.
FIM_TOKENS = (
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),  # Qwen2.5-Coder
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),  # StarCoder, SmolLM
    ("<|fim▁begin|>", "<|fim▁hole|>", "<|fim▁end|>"),  # DeepSeek-Coder
)


class PromptError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass
class Prompt:
    tokens: list[int]
    thinking: bool = False  # thoughts are wanted (else they are dropped from the output)
    opened_thinking: bool = False  # the prompt ends inside a reasoning block


def think_requested(command: GenerateCommand, default: bool) -> bool:
    value = command.get("think")
    if value is None:
        return default
    return bool(value)  # True or a level


def fim_tokens(vocab: dict[str, int]) -> tuple[str, str, str] | None:
    for triple in FIM_TOKENS:
        if all(token in vocab for token in triple):
            return triple
    return None


def collate(messages: list[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """Ollama's ``collate``: the system messages joined, and consecutive messages of one role
    (tool results apart) merged."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") == "system":
            system.append(message.get("content", ""))
        if out and out[-1].get("role") == message.get("role") and message.get("role") != "tool":
            out[-1]["content"] = out[-1].get("content", "") + "\n\n" + message.get("content", "")
        else:
            out.append(dict(message))
    return "\n\n".join(system), out


def render_go(template: Template, command: GenerateCommand, messages: list[ChatMessage], think: bool) -> str:
    """Ollama's ``Template.Execute``: FIM values, the ``.Messages`` form, or the legacy
    System/Prompt/Response form rendered turn by turn with the last turn left open."""
    level = command.get("think")
    values: dict[str, Any] = {
        "Tools": command.get("tools") or [],
        "Think": think,
        "ThinkLevel": level if isinstance(level, str) else "",
        "IsThinkSet": "think" in command,
        "Response": "",
    }
    prompt, suffix = command.get("prompt", ""), command.get("suffix", "")
    if suffix:
        return template.render({**values, "System": "", "Prompt": prompt, "Suffix": suffix})
    system, collated = collate(messages)
    if "Messages" in template.vars:
        return template.render({**values, "System": system, "Messages": collated})
    out: list[str] = []
    turn = {"System": "", "Prompt": "", "Response": ""}

    def flush() -> None:
        out.append(template.render({**values, **turn}))
        turn.update(System="", Prompt="", Response="")

    for message in collated:
        role, content = message.get("role"), message.get("content", "")
        if role == "system":
            if turn["Prompt"] or turn["Response"]:
                flush()
            turn["System"] = content
        elif role == "user":
            if turn["Response"]:
                flush()
            turn["Prompt"] = content
        elif role == "assistant":
            turn["Response"] = content
    out.append(template.render_open_turn({**values, **turn}))
    return "".join(out)


def hf_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Ollama messages in the shape Hugging Face chat templates expect."""
    out: list[dict[str, Any]] = []
    for message in messages:
        item: dict[str, Any] = {"role": message.get("role", ""), "content": message.get("content", "")}
        if message.get("thinking"):
            item["reasoning_content"] = message["thinking"]
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                hf_call: dict[str, Any] = {"type": "function", "function": call.get("function", {})}
                if call.get("id"):
                    hf_call["id"] = call["id"]
                calls.append(hf_call)
            item["tool_calls"] = calls
        if message.get("tool_name"):
            item["name"] = message["tool_name"]
        if message.get("tool_call_id"):
            item["tool_call_id"] = message["tool_call_id"]
        out.append(item)
    return out


def fit_messages(
    messages: list[ChatMessage], render: Callable[[list[ChatMessage]], list[int]], num_ctx: int
) -> list[int]:
    """Render the longest tail of the conversation that fits ``num_ctx``, always keeping the
    last message and the system messages before the kept tail (Ollama's ``chatPrompt``)."""
    tokens = render(messages)
    if len(tokens) <= num_ctx or len(messages) < 2:
        return tokens
    keep = len(messages) - 1
    for start in range(len(messages) - 2, -1, -1):
        candidate = _with_system(messages, start)
        if len(render(candidate)) > num_ctx:
            break
        keep = start
    return render(_with_system(messages, keep))


def _with_system(messages: list[ChatMessage], start: int) -> list[ChatMessage]:
    return [m for m in messages[:start] if m.get("role") == "system"] + messages[start:]


class PromptBuilder:
    """Builds prompts for one tokenizer (an mlx-lm ``TokenizerWrapper``)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab: dict[str, int] = tokenizer.get_vocab()
        self.has_thinking = bool(getattr(tokenizer, "has_thinking", False))
        self.think_start_tokens: tuple[int, ...] = tuple(getattr(tokenizer, "think_start_tokens", None) or ())
        self.fim = fim_tokens(self.vocab)
        self._templates: dict[str, Template] = {}

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def template(self, source: str) -> Template:
        if source not in self._templates:
            self._templates = {source: Template(source)}  # one per worker is the common case
        return self._templates[source]

    def build(self, command: GenerateCommand, num_ctx: int) -> Prompt:
        """Raise :class:`PromptError` for a prompt that cannot be built or does not fit."""
        think = think_requested(command, default=self.has_thinking)
        go_source = command.get("template", "")
        if command.get("raw"):
            tokens = list(self.tokenizer.encode(command.get("prompt", "")))
        elif command.get("suffix") and not go_source:
            tokens = self._fim(command)
        else:
            messages = list(command.get("messages", []))
            if go_source:
                try:
                    template = self.template(go_source)
                    render = lambda msgs: self.encode(render_go(template, command, msgs, think))  # noqa: E731
                    tokens = fit_messages(messages, render, self._room(command, num_ctx))
                except TemplateError as exc:
                    raise PromptError(str(exc), 500) from None
            else:
                chat = lambda msgs: self._chat(command, msgs, think)  # noqa: E731
                tokens = fit_messages(messages, chat, self._room(command, num_ctx))
        tokens = list(command.get("context", [])) + tokens
        tokens = self._fit_tokens(command, tokens, num_ctx)
        return Prompt(tokens, thinking=think, opened_thinking=self._opens_thinking(tokens))

    def _opens_thinking(self, tokens: list[int]) -> bool:
        """The prompt ends inside a reasoning block: with the opening tag, or with the tag
        and a newline or two (DeepSeek-R1's templates end with ``<think>\n``)."""
        start = self.think_start_tokens
        if not start:
            return False
        end = len(tokens)
        while end > len(start) and len(tokens) - end < 3 and self._blank(tokens[end - 1]):
            end -= 1
        return tuple(tokens[end - len(start) : end]) == start

    def _blank(self, token: int) -> bool:
        text = self.tokenizer.decode([token])
        return bool(text) and not text.strip()

    def _room(self, command: GenerateCommand, num_ctx: int) -> int:
        if command.get("truncate", True) is False:
            return 1 << 62  # no message truncation: an oversized prompt is refused below
        return max(num_ctx - len(command.get("context", [])), 1)

    def _chat(self, command: GenerateCommand, messages: list[ChatMessage], think: bool) -> list[int]:
        kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": True}
        if command.get("tools"):
            kwargs["tools"] = command["tools"]
        if self.has_thinking:
            kwargs["enable_thinking"] = think
        level = command.get("think")
        if isinstance(level, str):  # templates with effort levels (gpt-oss) read this one
            kwargs["reasoning_effort"] = "high" if level == "max" else level
        return list(self.tokenizer.apply_chat_template(hf_messages(messages), **kwargs))

    def _fim(self, command: GenerateCommand) -> list[int]:
        if self.fim is None:
            raise PromptError("this model does not support insert")
        prefix, suffix, middle = self.fim
        text = f"{prefix}{command.get('prompt', '')}{suffix}{command.get('suffix', '')}{middle}"
        return list(self.tokenizer.encode(text))

    def _fit_tokens(self, command: GenerateCommand, tokens: list[int], num_ctx: int) -> list[int]:
        """The runner's last resort: keep the first ``num_keep`` tokens and the newest rest."""
        if len(tokens) <= num_ctx:
            return tokens
        if command.get("truncate", True) is False or command.get("shift", True) is False:
            raise PromptError(PROMPT_TOO_LONG)
        keep = min(max(int(command.get("options", {}).get("num_keep", 4)), 0), num_ctx - 1)
        return tokens[:keep] + tokens[len(tokens) - (num_ctx - keep) :]
