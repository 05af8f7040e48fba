"""Parse a /metrics exposition with the Prometheus project's own Python parser
(prometheus_client, from PyPI) and print every sample as one JSON object per line:
{"name": ..., "labels": {...}, "value": ...}. Exits non-zero if the text does not parse.

Usage: python3 parse_metrics.py URL KEY   (KEY: a metrics_key, admin:<admin key> sent as
X-API-Key, or bearer-admin:<admin key> sent as a bearer token)
"""

import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families


def main() -> int:
    url, key = sys.argv[1], sys.argv[2]
    # A scraper's bearer token (metrics_key), or the admin key as X-API-Key.
    if key.startswith("admin:"):
        headers = {"X-API-Key": key.removeprefix("admin:")}
    elif key.startswith("bearer-admin:"):
        headers = {"Authorization": "Bearer " + key.removeprefix("bearer-admin:")}
    else:
        headers = {"Authorization": f"Bearer {key}"}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        content_type = response.headers.get("Content-Type", "")
        text = response.read().decode("utf-8")
    if not content_type.startswith("application/openmetrics-text"):
        print(f"unexpected content type {content_type!r}", file=sys.stderr)
        return 1
    families = 0
    for family in text_string_to_metric_families(text):
        families += 1
        for sample in family.samples:
            print(
                json.dumps(
                    {
                        "family": family.name,
                        "type": family.type,
                        "name": sample.name,
                        "labels": sample.labels,
                        "value": sample.value,
                    }
                )
            )
    print(json.dumps({"families": families}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
