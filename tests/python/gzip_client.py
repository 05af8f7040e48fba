"""python-socketio receiving `log:batch` with `encoding: "gzip"`: a binary attachment, the
gzip of the JSON array. Prints `ok`; exits non-zero otherwise.

Usage: python3 gzip_client.py URL TOKEN API_KEY
"""

import gzip
import json
import sys
import threading

import requests
import socketio


def main() -> int:
    url, token, key = sys.argv[1], sys.argv[2], sys.argv[3]
    client = socketio.Client()
    subscribed, got = threading.Event(), []
    done = threading.Event()
    client.on("log:subscribed", lambda ack: subscribed.set())

    @client.on("log:batch")
    def batch(data, *offset):
        got.append(data)
        done.set()

    client.connect(url, auth={"token": token}, transports=["websocket"], wait_timeout=10)
    client.emit("log:subscribe", {"deviceIds": ["py-gz"], "batch": True, "encoding": "gzip"})
    if not subscribed.wait(10):
        print("no log:subscribed")
        return 1
    logs = [{"deviceId": "py-gz", "message": f"python {i}"} for i in range(10)]
    r = requests.post(f"{url}/api/logs", json=logs, headers={"x-api-key": key}, timeout=10)
    assert r.status_code == 202, r.text
    if not done.wait(10):
        print("no log:batch")
        return 1
    client.disconnect()
    payload = got[0]
    assert isinstance(payload, bytes), type(payload)
    entries = json.loads(gzip.decompress(payload))
    assert [e["message"] for e in entries] == [f"python {i}" for i in range(10)], entries
    print("ok gzip batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
