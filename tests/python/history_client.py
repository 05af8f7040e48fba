"""History with the Python Socket.IO client (python-socketio), over long-polling and over
WebSocket: offsets as the last argument, `since` replays exactly what was missed, `tail`
the last N. Run by tests/python_client.rs: history_client.py URL TOKEN API_KEY."""
import json
import sys
import threading
import time
import urllib.request

import socketio

URL, TOKEN, API_KEY = sys.argv[1:4]


def ingest(logs):
    req = urllib.request.Request(
        f"{URL}/api/logs",
        data=json.dumps(logs).encode(),
        headers={"content-type": "application/json", "x-api-key": API_KEY},
        method="POST",
    )
    with urllib.request.urlopen(req) as r:
        assert r.status == 202, r.status


class Client:
    def __init__(self, transport):
        self.sio = socketio.Client(reconnection=False)
        self.logs = []
        self.lock = threading.Condition()
        self.sio.on("log:new", self.on_log)
        self.sio.connect(URL, auth={"token": TOKEN}, transports=[transport], wait_timeout=10)

    def on_log(self, entry, offset=None):
        with self.lock:
            self.logs.append((entry["message"], offset))
            self.lock.notify_all()

    def wait(self, n, timeout=10):
        deadline = time.time() + timeout
        with self.lock:
            while len(self.logs) < n:
                left = deadline - time.time()
                assert left > 0, f"only {len(self.logs)} of {n} logs"
                self.lock.wait(left)
            return list(self.logs)

    def subscribe(self, sub):
        ack = self.sio.call("log:subscribe", sub, timeout=10)
        assert ack["success"], ack
        return ack

    def close(self):
        self.sio.disconnect()


def scenario(transport):
    device = f"py-{transport}"
    msgs = lambda a, b: [{"deviceId": device, "message": f"{transport}-{i}"} for i in range(a, b)]
    c = Client(transport)
    c.subscribe({"deviceIds": [device], "resume": True})
    ingest(msgs(0, 5))
    first = c.wait(5)
    assert all(o for _, o in first), "offsets as the last argument"
    offset = first[-1][1]
    c.close()

    ingest(msgs(5, 12) + [{"deviceId": "someone-else", "message": "x"}])
    c = Client(transport)
    ack = c.subscribe({"deviceIds": [device], "since": offset})
    assert ack["recovered"] is True and ack["replayed"] == 7, ack
    got = [m for m, _ in c.wait(7)]
    assert got == [f"{transport}-{i}" for i in range(5, 12)], got
    c.close()

    c = Client(transport)
    ack = c.subscribe({"deviceIds": [device], "tail": 3})
    got = [m for m, _ in c.wait(3)]
    assert got == [f"{transport}-{i}" for i in range(9, 12)], got
    ingest(msgs(12, 13))
    assert c.wait(4)[-1][0] == f"{transport}-12", "then live"
    c.close()


passed = failed = 0
for transport in ["polling", "websocket"]:
    try:
        scenario(transport)
        print(f"ok: since and tail over {transport}")
        passed += 1
    except Exception as e:  # report and go on with the other transport
        print(f"FAILED: since and tail over {transport}: {e!r}")
        failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
