"""A logstream filter in Python: `min-level`.

Params: {"minLevel": "WARN", "devicePrefix": "sensor-"}
A log matches when its level is at least `minLevel` and its device id starts with
`devicePrefix` (both optional). Build with ../build.sh; the result is a WASI component that
implements world `filter-plugin` of `wit/plugin.wit`.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

LEVELS = {level.name: level.value for level in types.Level}

# id -> (minimum level value, device prefix)
SUBSCRIPTIONS = {}


def parse(params):
    try:
        value = json.loads(params)
    except ValueError as e:
        raise Err(f"params: not JSON: {e}")
    if not isinstance(value, dict):
        raise Err("params: must be an object")
    for key in value:
        if key not in ("minLevel", "devicePrefix"):
            raise Err(f"{key}: unknown field; expected minLevel or devicePrefix")
    level = value.get("minLevel", "TRACE")
    if not isinstance(level, str) or level.upper() not in LEVELS:
        raise Err(f"minLevel: unknown level {level!r}; expected one of {', '.join(LEVELS)}")
    prefix = value.get("devicePrefix", "")
    if not isinstance(prefix, str):
        raise Err("devicePrefix: must be a string")
    return LEVELS[level.upper()], prefix


class Filter(exports.Filter):
    def add_subscription(self, id, params):
        SUBSCRIPTIONS[id] = parse(params)
        host.log(host.LogLevel.DEBUG, f"subscription {id} added")

    def remove_subscription(self, id):
        SUBSCRIPTIONS.pop(id, None)

    def evaluate(self, batch):
        out = []
        for sub_id, (min_level, prefix) in SUBSCRIPTIONS.items():
            entries = [
                i
                for i, entry in enumerate(batch)
                if entry.level.value >= min_level and entry.device_id.startswith(prefix)
            ]
            if entries:
                out.append(types.SubscriptionMatches(id=sub_id, entries=entries))
        return out
