"""A tiny random-weight Qwen2 model directory for tests.

Everything is built locally and deterministically (no hub, no MLX): fp32 weights from a
seeded numpy generator, and a byte-level BPE tokenizer trained with ``tokenizers`` on the
short English corpus below. Same seed, same bytes. ``mlx_lm.load`` accepts the result and
greedy generation runs (producing fluent nonsense).

The ``agent`` flavour has a Qwen3-style chat template with tools and reasoning tags, and
weights that make it answer every chat the same way, whatever the sampling settings: a
thought, a sentence, one tool call (see :data:`AGENT_SCRIPT`). Its layers add nothing to the
residual stream and its output head maps each script token to the next one.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from registry.gguf_tokenizer import write_tokenizer_files

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
MAX_POSITIONS = 4096
VOCAB_TARGET = 1024
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen2.5-style ChatML, with the system turn only when the conversation has one.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# The agent flavour: Qwen3-style, tools and thinking; no thinking ⇒ an empty reasoning block.
AGENT_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n"
    "{%- if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n"
    'Answer a function call as <tool_call>{"name": ..., "arguments": ...}</tool_call>'
    "<|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first %}"
    "{%- elif message.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n"
    "{%- if message.reasoning_content %}<think>{{ message.reasoning_content }}</think>{% endif %}"
    "{{ message.content }}"
    "{%- for tool_call in message.tool_calls or [] %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '<tool_call>{"name": "{{ tool_call.name }}", "arguments": {{ tool_call.arguments | tojson }}}'
    "</tool_call>"
    "{%- endfor %}<|im_end|>\n"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think></think>{% endif %}"
    "{%- endif %}"
)
AGENT_THOUGHT = "The user asks about the weather."
AGENT_ANSWER = "Let me check."
AGENT_CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
# What the agent model says after its generation prompt, token by token.
AGENT_SCRIPT = (
    "<think>",
    AGENT_THOUGHT,
    "</think>",
    AGENT_ANSWER,
    "<tool_call>",
    AGENT_CALL,
    "</tool_call>",
    "<|im_end|>",
)
AGENT_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", AGENT_THOUGHT, AGENT_ANSWER, AGENT_CALL)

CORPUS = """\
The river town woke slowly on autumn mornings. Fog rolled up from the water and settled
between the houses, and the baker was always the first to open his door. He carried trays
of warm bread to the window while the church bell counted the hours. Children ran past on
their way to school, and the old ferryman waited at the pier with a cup of black coffee.

A small library stood at the end of the main street. Its shelves held books about distant
countries, mountains and oceans, about the stars and the planets, about kings and farmers
and inventors. The librarian, a patient woman with silver hair, knew where every story
lived. When a visitor asked a question, she would smile, walk to the right shelf, and pull
out exactly the volume that answered it.

What is the capital of France? Paris is the capital of France, and it is known for its
museums, its cafes and the long river that runs through the city. Rome is the capital of
Italy, Madrid is the capital of Spain, and Berlin is the capital of Germany. Many travelers
visit these cities every summer to see old buildings, taste new food and hear new music.

Computers follow instructions written by people. A program reads some input, does a little
work, and writes an output. Good programs are simple and clear: each function does one
thing, each name says what it means, and each test checks one behaviour. When a program
fails, an engineer reads the error message, forms a guess, and tries a small experiment.

Numbers have their own patterns. One, two, three, four, five, six, seven, eight, nine and
ten. The sum of 12 and 30 is 42, and half of 100 is 50. A year has 365 days, a day has 24
hours, and an hour has 60 minutes. Counting is the first kind of mathematics that children
learn, and measuring is the second.

In the evening the wind turned cold and the lamps were lit one by one. Families gathered
around their tables to share soup and talk about the day. Somebody played a guitar on a
balcony, a dog barked twice, and the last boat crossed the dark water. Then the town was
quiet again, and everyone slept until the bakery opened in the morning.

"Hello," said the traveler. "Can you help me find the station?" The girl pointed north.
"Walk past the library, turn left at the bridge, and you will see it. The train leaves at
seven." He thanked her, lifted his bag, and hurried away through the narrow streets.
"""


def train_tokenizer(agent: bool = False) -> Tokenizer:
    """Byte-level BPE trained on CORPUS, with the ChatML special tokens at ids 0..2 (and the
    agent flavour's reasoning/tool tags and script pieces as added tokens)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        min_frequency=1,
        show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    if agent:
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in AGENT_TOKENS])
    return tokenizer


def _scripted(weights: dict[str, np.ndarray], tokenizer: Tokenizer, seed: int) -> dict[str, np.ndarray]:
    """Make the model follow :data:`AGENT_SCRIPT`: the layers write nothing into the residual
    stream, so the logits depend on the current token only, and the untied output head gives
    each script token's successor a margin of ~20 nats over anything else."""
    rng = np.random.default_rng(seed + 1)
    embed = weights["model.embed_tokens.weight"]
    vocab_size = embed.shape[0]
    for i in range(LAYERS):
        weights[f"model.layers.{i}.self_attn.o_proj.weight"][:] = 0.0
        weights[f"model.layers.{i}.mlp.down_proj.weight"][:] = 0.0
    weights["model.norm.weight"][:] = 1.0
    head = rng.normal(0.0, 0.1, size=(vocab_size, HIDDEN)).astype(np.float32)
    ids = [tokenizer.token_to_id(t) for t in AGENT_SCRIPT]
    assert None not in ids
    # The generation prompt ends with "\n" (think on: the script starts with the reasoning
    # block) or with "</think>" (think off: it starts with the answer).
    newline = tokenizer.encode("\n").ids[-1]
    chain = [(newline, ids[0]), *itertools.pairwise(ids)]
    for prev, nxt in chain:
        direction = embed[prev] / np.linalg.norm(embed[prev])
        head[nxt] = 4.0 * direction
    weights["lm_head.weight"] = head
    return weights


def _weights(vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS

    def linear(out_dim: int, in_dim: int, gain: float = 1.0) -> np.ndarray:
        return rng.normal(0.0, gain * in_dim**-0.5, size=(out_dim, in_dim)).astype(np.float32)

    def vector(n: int, mean: float, std: float) -> np.ndarray:
        return (mean + rng.normal(0.0, std, size=(n,))).astype(np.float32)

    # Why these scales: with tied embeddings a random model tends to predict its input token
    # again. Small embeddings (the layers' outputs dominate the residual) and sharp, position
    # dependent attention (q/k gain 3) make greedy output vary: ~35 distinct tokens in 40.
    weights: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": rng.normal(0.0, 0.1, size=(vocab_size, HIDDEN)).astype(np.float32),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}"
        weights[f"{p}.input_layernorm.weight"] = vector(HIDDEN, 1.0, 0.1)
        weights[f"{p}.self_attn.q_proj.weight"] = linear(HEADS * head_dim, HIDDEN, gain=3.0)
        weights[f"{p}.self_attn.q_proj.bias"] = vector(HEADS * head_dim, 0.0, 0.1)
        weights[f"{p}.self_attn.k_proj.weight"] = linear(KV_HEADS * head_dim, HIDDEN, gain=3.0)
        weights[f"{p}.self_attn.k_proj.bias"] = vector(KV_HEADS * head_dim, 0.0, 0.1)
        weights[f"{p}.self_attn.v_proj.weight"] = linear(KV_HEADS * head_dim, HIDDEN)
        weights[f"{p}.self_attn.v_proj.bias"] = vector(KV_HEADS * head_dim, 0.0, 0.1)
        weights[f"{p}.self_attn.o_proj.weight"] = linear(HIDDEN, HEADS * head_dim)
        weights[f"{p}.post_attention_layernorm.weight"] = vector(HIDDEN, 1.0, 0.1)
        weights[f"{p}.mlp.gate_proj.weight"] = linear(INTERMEDIATE, HIDDEN)
        weights[f"{p}.mlp.up_proj.weight"] = linear(INTERMEDIATE, HIDDEN)
        weights[f"{p}.mlp.down_proj.weight"] = linear(HIDDEN, INTERMEDIATE)
    weights["model.norm.weight"] = vector(HIDDEN, 1.0, 0.1)
    return weights


def _config(vocab_size: int, tokenizer: Tokenizer) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": MAX_POSITIONS,
        "max_window_layers": LAYERS,
        "use_sliding_window": False,
        "sliding_window": MAX_POSITIONS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "hidden_act": "silu",
        "vocab_size": vocab_size,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "bos_token_id": tokenizer.token_to_id("<|endoftext|>"),
        "eos_token_id": tokenizer.token_to_id("<|im_end|>"),
    }


def write_tiny_model(out_dir: Path, seed: int = 0, flavour: str = "plain") -> None:
    """Write a tiny Qwen2 model directory (config, fp32 safetensors, tokenizer) to ``out_dir``.

    The tokenizer does not depend on ``seed``; the weights do. Same seed ⇒ identical bytes.
    ``flavour`` is ``plain`` (ChatML, random weights) or ``agent`` (see the module docstring).
    """
    if flavour not in ("plain", "agent"):
        raise ValueError(f"unknown tiny model flavour: {flavour!r}")
    agent = flavour == "agent"
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(agent)
    vocab_size = tokenizer.get_vocab_size()
    eos_id = tokenizer.token_to_id("<|im_end|>")
    assert eos_id is not None
    weights = _weights(vocab_size, seed)
    if agent:
        weights = _scripted(weights, tokenizer, seed)
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"format": "mlx"})
    os.chmod(out_dir / "model.safetensors", 0o644)  # safetensors creates it owner-only
    config = _config(vocab_size, tokenizer)
    config["tie_word_embeddings"] = not agent
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_tokenizer_files(
        out_dir,
        tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        eos_ids=[eos_id],
        pad_token="<|endoftext|>",
        pad_id=tokenizer.token_to_id("<|endoftext|>"),
        chat_template=AGENT_TEMPLATE if agent else CHAT_TEMPLATE,
        model_max_length=MAX_POSITIONS,
    )
