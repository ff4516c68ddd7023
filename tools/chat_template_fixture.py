#!/usr/bin/env python3
"""Writes tests/fixtures/chat_templates/expected.json: what HF transformers'
`apply_chat_template` renders for the real chat templates of a few models,
so tests/chat_template.rs can check tpi's rendering (src/model/chat_template.rs)
against it byte for byte.

    python3 -m venv /tmp/ct-venv && /tmp/ct-venv/bin/pip install transformers jinja2
    /tmp/ct-venv/bin/python tools/chat_template_fixture.py

Reads tests/fixtures/chat_templates/<name>.json, one per model, each
{"chat_template", "bos_token", "eos_token", "source"}: the template string of
the model's tokenizer_config.json and where it was copied from (this machine
has no hub access, so "source" names the vendoring file). For every template,
every conversation below and add_generation_prompt false and true, it builds a
tokenizer with that template and those special tokens (no download) and calls
`tokenizer.apply_chat_template(messages, tokenize=False, ...)`.

A case is {"template", "conversation", "messages", "add_generation_prompt"}
plus either "expected" (the rendered string) or "error" ({"type": the Python
exception class, "message": str(exception)}). raise_exception() in a template
raises jinja2's TemplateError with the template's own message.

Dates: Llama 3.2's template calls strftime_now("%d %b %Y") when no
date_string is passed. transformers' strftime_now is datetime.now().strftime,
so this script replaces the `datetime` its module sees with one whose now() is
FIXED_NOW (naive, read as UTC); the Rust test pins tpi's clock to the same
instant (FIXED_NOW_UNIX in expected.json). Llama 3.1 falls back to its own
constant "26 Jul 2024".

Not run by the test suite.
"""

import datetime as real_datetime
import importlib.metadata
import json
import sys
from pathlib import Path

import jinja2
import tokenizers
import transformers
from transformers import PreTrainedTokenizerFast
from transformers.utils import chat_template_utils

DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "chat_templates"
TEMPLATES = [
    "llama2-chat",
    "llama3-instruct",
    "llama3.1-instruct",
    "llama3.2-instruct",
    "qwen2.5-instruct",
    "mistral-7b-instruct-v0.1",
    "mistral-7b-instruct-v0.2",
    "tinyllama-chat",
]

FIXED_NOW = real_datetime.datetime(2026, 3, 5, 9, 7, 2)
FIXED_NOW_UNIX = int(FIXED_NOW.replace(tzinfo=real_datetime.timezone.utc).timestamp())

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
USER1 = {"role": "user", "content": "Hello, how are you?"}
ASSISTANT1 = {"role": "assistant", "content": "   I'm fine, thanks.   "}
USER2 = {"role": "user", "content": "Grüße aus Köln! 世界 👋\nTwo lines, \"quotes\" and {{ braces }}."}

CONVERSATIONS = {
    "single_user": [USER1],
    "system_user": [SYSTEM, USER1],
    "multi_turn": [USER1, ASSISTANT1, USER2],
    "system_multi_turn": [SYSTEM, USER1, ASSISTANT1, USER2],
    # Two user turns in a row: Llama 2 and Mistral raise.
    "non_alternating": [USER1, {"role": "user", "content": "Are you there?"}],
    # A role no template knows.
    "unknown_role": [USER1, {"role": "critic", "content": "Be brief."}],
    # Only a system message: Mistral v0.1 raises (system is not user/assistant).
    "system_only": [SYSTEM],
    "empty": [],
    # OpenAI-style content parts instead of a string. Keys in sorted order:
    # tpi's dicts iterate sorted, Python's in insertion order (see the
    # module doc of src/model/chat_template.rs).
    "content_parts": [{"role": "user", "content": [{"text": "Hello", "type": "text"}]}],
    "content_null": [USER1, {"role": "assistant", "content": None}],
}


# An OpenAI-style tool, keys sorted at every level (as above).
TOOL = {
    "function": {
        "description": "Get the current weather in a city",
        "name": "get_weather",
        "parameters": {
            "properties": {
                "city": {"description": "City name, e.g. Köln", "type": "string"},
                "days": {"maximum": 7, "minimum": 1, "type": "integer"},
                "scale": {"default": 1.5, "type": "number"},
            },
            "required": ["city"],
            "type": "object",
        },
    },
    "type": "function",
}

# (template, conversation, add_generation_prompt, extra template variables):
# passed to apply_chat_template as keyword arguments (tools= for "tools").
EXTRA_CASES = [
    ("llama3.1-instruct", "system_user", True, {"date_string": "01 Jan 2025"}),
    ("llama3.2-instruct", "single_user", True, {"date_string": "01 Jan 2025"}),
    ("llama3.1-instruct", "system_user", True, {"tools": [TOOL]}),
    ("llama3.2-instruct", "multi_turn", True, {"tools": [TOOL]}),
    ("qwen2.5-instruct", "system_user", True, {"tools": [TOOL]}),
    ("qwen2.5-instruct", "multi_turn", False, {"tools": [TOOL]}),
]

# Not model templates: the engine features (tojson, printing Python values)
# rendered on their own. messages[0].content carries the value.
VALUE = {
    "a_list": [1, 2.5, 1e16, 1e-05, -0.0, True, False, None, [], {}],
    "big": 18446744073709551615,
    "text": "Grüße \"quoted\" \\ back\nnew\ttab \u0001 \u007f </script> & ' 👋",
    "zero": 0.1,
}
SNIPPETS = {
    "tojson": "{{ messages[0].content | tojson }}",
    "tojson_indent": "{{ messages[0].content | tojson(indent=2) }}",
    "tojson_indent_str": "{{ messages[0].content | tojson(indent='\t') }}",
    "tojson_separators": "{{ messages[0].content | tojson(separators=(',', ':')) }}",
    "tojson_ascii_sorted": "{{ messages[0].content | tojson(ensure_ascii=true, sort_keys=true) }}",
    "tojson_scalar": "{{ messages[0].content.text | tojson }}|{{ 3 | tojson }}|{{ none | tojson }}",
    "print_python": "{{ messages[0].content }}|{{ messages[0].content.a_list }}|{{ none }}|{{ true }}|{{ 1.0 }}|{{ undefined_name }}",
    "trim_python": "[{{ messages[0].content.a_list | trim }}][{{ '  x  ' | trim }}][{{ 'xxaxx' | trim('x') }}]",
    "py_methods": "{% set t = messages[0].content.text %}{{ t.strip() }}|{{ t.startswith('Gr') }}|{{ 'hello world'.title() }}|{{ 'a,b,,c'.split(',') }}|{{ '  a b  '.split() }}|{{ t.upper() }}|{{ 'x-y'.replace('-', '+') }}|{% for k, v in messages[0].content.items() %}{{ k }}={{ v is string }};{% endfor %}",
    "loop_controls": "{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i == 5 %}{% break %}{% endif %}{{ i }}{{ ',' if not loop.last }}{% endfor %}",
    "whitespace": "  {% if true %}\n    a\n  {% endif %}\n  b {# c #}\n{% for x in [1, 2] %}\n  {{ x }}\n{% endfor %}\n",
    "raise": "{% if messages | length > 0 %}{{ raise_exception('custom refusal: ' ~ messages[0].role) }}{% endif %}",
    "strftime": "{{ strftime_now('%Y-%m-%d %H:%M:%S %a %A %b %B %j %p %I %y') }}",
}


class FixedDatetime(real_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW


def tokenizer_for(t: dict) -> PreTrainedTokenizerFast:
    model = tokenizers.models.WordLevel({"<unk>": 0}, unk_token="<unk>")
    kwargs = {}
    if t["bos_token"] is not None:
        kwargs["bos_token"] = t["bos_token"]
    if t["eos_token"] is not None:
        kwargs["eos_token"] = t["eos_token"]
    tok = PreTrainedTokenizerFast(tokenizer_object=tokenizers.Tokenizer(model), **kwargs)
    tok.chat_template = t["chat_template"]
    return tok


def main() -> None:
    # strftime_now reads `datetime` from this module's globals at call time.
    chat_template_utils.datetime = FixedDatetime
    cases = []
    for name in TEMPLATES:
        t = json.loads((DIR / f"{name}.json").read_text(encoding="utf-8"))
        tok = tokenizer_for(t)
        for conv, messages in CONVERSATIONS.items():
            for agp in (False, True):
                case = {
                    "template": name,
                    "conversation": conv,
                    "messages": messages,
                    "add_generation_prompt": agp,
                }
                try:
                    out = tok.apply_chat_template(
                        [dict(m) for m in messages], tokenize=False, add_generation_prompt=agp
                    )
                    case["expected"] = out
                except Exception as e:  # the error is the expected result
                    case["error"] = {"type": type(e).__name__, "message": str(e)}
                cases.append(case)
    for name, conv, agp, extra in EXTRA_CASES:
        t = json.loads((DIR / f"{name}.json").read_text(encoding="utf-8"))
        tok = tokenizer_for(t)
        messages = CONVERSATIONS[conv]
        kwargs = dict(extra)
        case = {
            "template": name,
            "conversation": conv,
            "messages": messages,
            "add_generation_prompt": agp,
            "extra": extra,
        }
        case["expected"] = tok.apply_chat_template(
            [dict(m) for m in messages], tokenize=False, add_generation_prompt=agp, **kwargs
        )
        cases.append(case)
    snippets = []
    for name, text in SNIPPETS.items():
        tok = tokenizer_for({"chat_template": text, "bos_token": "<s>", "eos_token": "</s>"})
        messages = [{"role": "user", "content": VALUE}]
        case = {"name": name, "chat_template": text, "messages": messages}
        try:
            case["expected"] = tok.apply_chat_template(messages, tokenize=False)
        except Exception as e:
            case["error"] = {"type": type(e).__name__, "message": str(e)}
        snippets.append(case)
    doc = {
        "generator": "tools/chat_template_fixture.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "tokenizers": importlib.metadata.version("tokenizers"),
        "python": sys.version.split()[0],
        "fixed_now_unix": FIXED_NOW_UNIX,
        "cases": cases,
        "snippets": snippets,
    }
    out = DIR / "expected.json"
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    n_err = sum(1 for c in cases if "error" in c)
    print(f"{out}: {len(cases)} cases, {n_err} errors")


if __name__ == "__main__":
    main()
