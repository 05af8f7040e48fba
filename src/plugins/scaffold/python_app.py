"""`{{name}}`: a logstream filter plugin in Python.

Params: {"text": "..."}; a log matches when its message contains `text` (case-insensitive).
Build: ./build.sh   (needs `pip install componentize-py==0.25.1`)
Check: logstream plugin check {{name}}.wasm --params '{"text":"error"}'
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import types

SUBSCRIPTIONS = {}


def parse(params):
    try:
        value = json.loads(params)
    except ValueError as e:
        raise Err(f"params: not JSON: {e}")
    if not isinstance(value, dict):
        raise Err("params: must be an object")
    for key in value:
        if key != "text":
            raise Err(f"{key}: unknown field; expected text")
    text = value.get("text")
    if not isinstance(text, str) or not text:
        raise Err("text: must be a non-empty string")
    return text.lower()


class Filter(exports.Filter):
    def add_subscription(self, id, params):
        SUBSCRIPTIONS[id] = parse(params)

    def remove_subscription(self, id):
        SUBSCRIPTIONS.pop(id, None)

    def evaluate(self, batch):
        messages = [entry.message.lower() for entry in batch]
        out = []
        for sub_id, text in SUBSCRIPTIONS.items():
            entries = [i for i, m in enumerate(messages) if text in m]
            if entries:
                out.append(types.SubscriptionMatches(id=sub_id, entries=entries))
        return out
