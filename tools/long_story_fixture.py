#!/usr/bin/env python3
"""Writes tests/fixtures/stories260K/long_story.json: stories260K's greedy
continuation of its "Once upon a time" prompt for 160 tokens, from HF
transformers in float32, so tests can feed a prompt longer than two prefill
batches (`tpi::engine::PREFILL_BATCH`) and check the token that must come
next.

    python3 -m venv /tmp/ls-venv && /tmp/ls-venv/bin/pip install torch transformers safetensors
    /tmp/ls-venv/bin/python tools/long_story_fixture.py

The prompt ids are those of reference.json's "once_upon_a_time_64" (the same
prompt, a longer story); the first 64 greedy ids must equal that case's (the
script checks). Each step records the gap between the top two logits
("margins", rounded; "min_margin" is the smallest): a greedy step with a gap far above f32
rounding is one every correct engine takes.

Not run by the test suite.
"""

import json
from pathlib import Path

import torch
import transformers

N_NEW = 160
DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "stories260K"


def main():
    ref = json.loads((DIR / "reference.json").read_text())
    case = ref["once_upon_a_time_64"]
    model = transformers.AutoModelForCausalLM.from_pretrained(DIR, torch_dtype=torch.float32)
    model.eval()
    ids = list(case["ids"])
    greedy, margins = [], []
    with torch.no_grad():
        for _ in range(N_NEW):
            logits = model(torch.tensor([ids + greedy])).logits[0, -1]
            top = torch.topk(logits, 2)
            greedy.append(int(top.indices[0]))
            margins.append(float(top.values[0] - top.values[1]))
    assert greedy[:64] == case["greedy_ids"], "the first 64 ids differ from reference.json"
    out = {
        "oracle": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "compute_dtype": "float32",
            "method": "argmax of the last position's logits, one full forward per step",
        },
        "ids": ids,
        "n_new": N_NEW,
        "greedy_ids": greedy,
        "min_margin": min(margins),
        "margins": [round(m, 4) for m in margins],
    }
    (DIR / "long_story.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{N_NEW} greedy ids, smallest top-2 gap {min(margins):.4f}")


if __name__ == "__main__":
    main()
