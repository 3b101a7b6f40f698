"""Write ``tiny_references.json``: transformers' outputs (mean-pooled and CLS vectors) for
the tiny random encoders of ``tiny_encoders.py``.

Run once, in a throwaway environment with torch and transformers (never a dependency of the
project), from the repository root::

    /tmp/stref/bin/python tests/data/make_tiny_references.py
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import NomicBertConfig, NomicBertModel, XLMRobertaConfig, XLMRobertaModel

sys.path.insert(0, str(Path(__file__).parent))
import tiny_encoders as tiny

OUT = Path(__file__).with_name("tiny_references.json")


def outputs(model: torch.nn.Module, weights: dict[str, Any], pad: int) -> dict[str, Any]:
    state = {k: torch.from_numpy(v) for k, v in weights.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("_ids" in m for m in missing), (missing, unexpected)
    mask = torch.tensor(tiny.ATTENTION_MASK)
    with torch.no_grad():
        states = model(input_ids=torch.tensor(tiny.input_ids(pad)), attention_mask=mask).last_hidden_state
    weight = mask[..., None].float()
    return {"mean": ((states * weight).sum(1) / weight.sum(1)).tolist(), "cls": states[:, 0].tolist()}


def main() -> None:
    nomic = NomicBertModel(
        NomicBertConfig(
            vocab_size=tiny.VOCAB,
            hidden_size=tiny.HIDDEN,
            num_hidden_layers=tiny.LAYERS,
            num_attention_heads=tiny.HEADS,
            intermediate_size=tiny.INNER,
            max_position_embeddings=tiny.NOMIC_CONFIG["max_trained_positions"],
            type_vocab_size=2,
            layer_norm_eps=1e-12,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": float(tiny.NOMIC_CONFIG["rotary_emb_base"]),
            },
        )
    ).eval()
    config = {k: v for k, v in tiny.ROBERTA_CONFIG.items() if k not in ("model_type", "architectures")}
    roberta = XLMRobertaModel(XLMRobertaConfig(**config), add_pooling_layer=False).eval()
    roberta_weights = {k.removeprefix("roberta."): v for k, v in tiny.roberta_weights().items()}
    versions = {name: importlib.metadata.version(name) for name in ("transformers", "torch")}
    data = {
        "about": "transformers' outputs for tiny_encoders.py; see make_tiny_references.py",
        "versions": versions,
        "nomic_bert": outputs(nomic, tiny.nomic_transformers_names(tiny.nomic_weights()), 0),
        "xlm-roberta": outputs(roberta, roberta_weights, tiny.ROBERTA_CONFIG["pad_token_id"]),
    }
    OUT.write_text(json.dumps(data) + "\n", encoding="utf-8")
    print(f"wrote {OUT} with {versions}")


if __name__ == "__main__":
    main()
