#!/usr/bin/env python3
"""Soak test for a `weft` binary on loopback, with the standard library only.

Starts `weft serve --test-nodes` on a free loopback port with a temporary data folder, then:

1. connects M WebSocket clients (a minimal RFC 6455 client below; the stdlib has none), queues
   one prompt per client under its client id and checks that every client got its prompt's
   `execution_success` (and none of another client's);
2. queues N prompts from a few submitting threads while the server is killed with SIGKILL K
   times mid-burst and restarted, then waits for the queue to drain and checks that every
   prompt id the server acknowledged (HTTP 200) is in the history: none lost.

Prints submissions/s, peak RSS of the server, WebSocket figures and the lost count; exits 1 if
anything was lost or a client missed an event. Loopback only; the data folder is deleted at the
end. Example:

    tools/soak.py --weft target/release/weft --prompts 10000 --clients 1000 --kills 8
"""

import argparse
import base64
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

# EmptyImage needs no model: a tiny image, previewed (a temp file, no output folder growth).
def graph(i):
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": i % 0xFFFFFF}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
    }


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, weft, data, port):
        self.weft, self.data, self.port = weft, data, port
        self.proc = None
        self.peak_rss_kib = 0

    def start(self):
        self.proc = subprocess.Popen(
            [self.weft, "serve", "--test-nodes", "--port", str(self.port),
             "--data-dir", os.path.join(self.data, "data"),
             "--models-dir", os.path.join(self.data, "models")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(800):
            try:
                self.get("/prompt")
                return
            except (OSError, urllib.error.URLError):
                if self.proc.poll() is not None:
                    sys.exit(f"weft exited at start: {self.proc.returncode}")
                time.sleep(0.025)
        sys.exit("weft did not start listening")

    def sample_rss(self):
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.peak_rss_kib = max(self.peak_rss_kib, int(line.split()[1]))
        except OSError:
            pass

    def kill(self):
        self.sample_rss()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.sample_rss()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path, timeout=30):
        with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
            return json.loads(r.read() or b"null")

    def post(self, path, body, timeout=30):
        request = urllib.request.Request(
            self.url(path), data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")

    def wait_drained(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.sample_rss()
            if self.get("/prompt")["exec_info"]["queue_remaining"] == 0:
                return True
            time.sleep(0.25)
        return False


class WsClient:
    """A blocking handshake, then frames read without blocking through a selector."""

    def __init__(self, port, client_id):
        self.client_id = client_id
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((
            f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise OSError("closed during the handshake")
            head += chunk
        status, _, rest = head.partition(b"\r\n\r\n")
        if b" 101 " not in status.split(b"\r\n")[0]:
            raise OSError(f"handshake refused: {status[:80]!r}")
        self.buffer = rest
        self.sock.setblocking(False)
        self.events = []
        self.frames = 0

    def feed(self):
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return True
        if not data:
            return False
        self.buffer += data
        while len(self.buffer) >= 2:
            opcode, n = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F
            at = 2
            if n == 126:
                if len(self.buffer) < 4:
                    break
                n, at = struct.unpack(">H", self.buffer[2:4])[0], 4
            elif n == 127:
                if len(self.buffer) < 10:
                    break
                n, at = struct.unpack(">Q", self.buffer[2:10])[0], 10
            if len(self.buffer) < at + n:
                break
            payload, self.buffer = self.buffer[at:at + n], self.buffer[at + n:]
            # Only this client's own prompt events are parsed (status broadcasts are most of
            # the traffic: one per queue change, to every client).
            if opcode == 1 and b'"prompt_id"' in payload:
                self.events.append(json.loads(payload))
            self.frames += opcode == 1
        return True


def websocket_phase(server, clients):
    sockets, failed = [], 0
    for i in range(clients):
        try:
            sockets.append(WsClient(server.port, f"soak-{i}"))
        except OSError:
            failed += 1
    selector = selectors.DefaultSelector()
    for ws in sockets:
        selector.register(ws.sock, selectors.EVENT_READ, ws)
    expected = {}
    for ws in sockets:
        _, body = server.post("/prompt", {"prompt": graph(len(expected)), "client_id": ws.client_id})
        expected[ws.client_id] = body["prompt_id"]
    server.wait_drained(600)
    def complete():
        return all(any(e.get("type") == "execution_success"
                       and e["data"]["prompt_id"] == expected[ws.client_id] for e in ws.events)
                   for ws in sockets)
    # Read until every client has its prompt's end, or nothing has arrived for 10 s.
    idle_since = time.time()
    while time.time() - idle_since < 10 and not complete():
        ready = selector.select(timeout=0.5)
        for key, _ in ready:
            key.data.feed()
        if ready:
            idle_since = time.time()
    missed = astray = 0
    for ws in sockets:
        mine = expected[ws.client_id]
        seen = {e["data"].get("prompt_id") for e in ws.events
                if isinstance(e.get("data"), dict) and e["data"].get("prompt_id")}
        missed += mine not in seen
        astray += len(seen - {mine})
        ws.sock.close()
    return {"clients": len(sockets), "failed_connects": failed, "missed": missed,
            "astray": astray, "frames": sum(ws.frames for ws in sockets)}


def submission_phase(server, prompts, kills, threads):
    acknowledged, errors = [], [0]
    lock = threading.Lock()
    counter = iter(range(prompts))
    up = threading.Event()
    up.set()

    def submit():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            while True:
                up.wait()
                try:
                    status, body = server.post("/prompt", {"prompt": graph(i)}, timeout=60)
                    if status == 200:
                        with lock:
                            acknowledged.append(body["prompt_id"])
                        break
                except (OSError, urllib.error.URLError, json.JSONDecodeError):
                    with lock:
                        errors[0] += 1
                    time.sleep(0.05)

    start = time.time()
    workers = [threading.Thread(target=submit) for _ in range(threads)]
    for w in workers:
        w.start()
    # Kill during the bursts, spread over the submissions.
    for k in range(kills):
        target = prompts * (k + 1) // (kills + 1)
        while len(acknowledged) < target and any(w.is_alive() for w in workers):
            time.sleep(0.01)
        up.clear()
        server.kill()
        server.start()
        up.set()
    for w in workers:
        w.join()
    elapsed = time.time() - start
    drained = server.wait_drained(3600)
    history = server.get("/history", timeout=300)
    lost = [p for p in acknowledged if p not in history]
    return {"acknowledged": len(acknowledged), "seconds": round(elapsed, 1),
            "submissions_per_s": round(len(acknowledged) / elapsed, 1),
            "retried_errors": errors[0], "drained": drained, "lost": len(lost)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weft", default="target/release/weft")
    parser.add_argument("--prompts", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--threads", type=int, default=8, help="submitting threads")
    args = parser.parse_args()
    data = tempfile.mkdtemp(prefix="weft-soak-")
    server = Server(os.path.abspath(args.weft), data, free_port())
    try:
        server.start()
        ws = websocket_phase(server, args.clients)
        print(f"websocket: {json.dumps(ws)}", flush=True)
        sub = submission_phase(server, args.prompts, args.kills, args.threads)
        server.sample_rss()
        print(f"submissions: {json.dumps(sub)}", flush=True)
        print(f"peak RSS of one server process: {server.peak_rss_kib / 1024:.0f} MiB")
        ok = sub["lost"] == 0 and ws["missed"] == 0 and ws["astray"] == 0 and sub["drained"]
        print("OK" if ok else "FAILED")
        return 0 if ok else 1
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
