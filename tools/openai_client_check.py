#!/usr/bin/env python3
"""Talks to a running `tpi-run serve` through the official `openai` Python
client and checks that it understands every answer:

  * /v1/models lists MODEL_ID;
  * a non-stream and a streamed chat completion (greedy) give the same text,
    equal to --expected (the command line's greedy output for the same
    rendered prompt, computed by the caller);
  * a non-stream and a streamed text completion give the same text;
  * a wrong model id raises openai.NotFoundError.

Exit status 0 when all hold; prints one JSON line with what it saw.
Run by tests/serve_clients.rs when a Python with `openai` is found.

usage: openai_client_check.py BASE_URL MODEL_ID MESSAGES_JSON MAX_TOKENS EXPECTED_JSON
"""

import json
import sys

import openai


def main() -> int:
    base_url, model_id, messages_json, max_tokens, expected_json = sys.argv[1:6]
    messages = json.loads(messages_json)
    expected = json.loads(expected_json)
    max_tokens = int(max_tokens)
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)

    ids = [m.id for m in client.models.list().data]
    assert model_id in ids, f"/v1/models lists {ids}, not {model_id}"

    whole = client.chat.completions.create(
        model=model_id, messages=messages, max_tokens=max_tokens, temperature=0
    )
    text = whole.choices[0].message.content
    assert whole.choices[0].finish_reason in ("stop", "length"), whole
    assert whole.usage.completion_tokens >= 1, whole.usage

    streamed = ""
    finish = None
    chunks = 0
    for chunk in client.chat.completions.create(
        model=model_id, messages=messages, max_tokens=max_tokens, temperature=0, stream=True
    ):
        chunks += 1
        if chunk.choices:
            streamed += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert streamed == text, f"streamed {streamed!r} != whole {text!r}"
    assert finish in ("stop", "length"), finish
    assert text == expected, f"chat text {text!r} != command line {expected!r}"

    prompt = "Once upon a time"
    c = client.completions.create(model=model_id, prompt=prompt, max_tokens=max_tokens, temperature=0)
    c_streamed = "".join(
        ch.choices[0].text
        for ch in client.completions.create(
            model=model_id, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True
        )
        if ch.choices
    )
    assert c.choices[0].text == c_streamed, (c.choices[0].text, c_streamed)

    try:
        client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=1)
        raise AssertionError("a wrong model id was accepted")
    except openai.NotFoundError:
        pass

    print(json.dumps({"chat": text, "chunks": chunks, "completion": c.choices[0].text,
                      "openai": openai.__version__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
