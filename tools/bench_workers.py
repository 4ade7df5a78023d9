#!/usr/bin/env python3
"""Throughput of 1, 2 and 3 `weft serve` workers on one PostgreSQL queue (issue 22).

Starts a throw-away PostgreSQL (initdb in a temporary folder; as the `postgres` user through
setpriv when run as root), then for each worker count starts that many `weft serve --test-nodes
--database ...` on one fresh database, sends PROMPTS prompts (StubImage -> TestSleep SECONDS ->
SaveImage) round-robin to the workers, and times until all are in the history.

    python3 tools/bench_workers.py target/debug/weft [PROMPTS] [SECONDS]

Standard library only; not run in CI.
"""
import json, os, shutil, socket, subprocess, sys, tempfile, time, urllib.request

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/debug/weft"
PROMPTS = int(sys.argv[2]) if len(sys.argv) > 2 else 200
SECONDS = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
PG = os.environ.get("WEFT_PG_BIN") or sorted(
    f"/usr/lib/postgresql/{v}/bin" for v in os.listdir("/usr/lib/postgresql"))[-1]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_pg(cmd):
    return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] + cmd if os.getuid() == 0 else cmd


def call(base, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(base + path, data=data), timeout=30) as r:
        return json.loads(r.read() or b"null")


def graph(i):
    # A different duration per prompt, so no worker answers the sleep from its output cache.
    return {
        "1": {"class_type": "StubImage", "inputs": {"content": "WHITE", "height": 8, "width": 8, "batch_size": 1}},
        "2": {"class_type": "TestSleep", "inputs": {"value": ["1", 0], "seconds": SECONDS + i * 1e-6}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"p{i}"}},
    }


def main():
    root = tempfile.mkdtemp(prefix="weft-bench-")
    os.chmod(root, 0o755)
    data = os.path.join(root, "pg")
    os.mkdir(data)
    if os.getuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(as_pg([f"{PG}/initdb", "-D", data, "-U", "weft", "--auth=trust", "--no-sync"]),
                   check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    pg = subprocess.Popen(as_pg([f"{PG}/postgres", "-D", data, "-p", str(port), "-k", root,
                                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while subprocess.run([f"{PG}/pg_isready", "-h", "127.0.0.1", "-p", str(port)],
                             stdout=subprocess.DEVNULL).returncode != 0:
            time.sleep(0.1)
        for workers in (1, 2, 3):
            db = f"bench{workers}"
            subprocess.run([f"{PG}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "weft", db], check=True)
            url = f"postgres://weft@127.0.0.1:{port}/{db}"
            procs, bases = [], []
            for w in range(workers):
                p = free_port()
                procs.append(subprocess.Popen(
                    [BIN, "serve", "--test-nodes", "--port", str(p), "--database", url,
                     "--data-dir", os.path.join(root, f"{db}-w{w}"), "--models-dir", os.path.join(root, "models")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                bases.append(f"http://127.0.0.1:{p}")
            try:
                for base in bases:
                    for _ in range(400):
                        try:
                            call(base, "/prompt")
                            break
                        except OSError:
                            time.sleep(0.05)
                start = time.time()
                ids = [call(bases[i % workers], "/prompt", {"prompt": graph(i)})["prompt_id"] for i in range(PROMPTS)]
                while len(call(bases[0], "/history")) < PROMPTS:
                    time.sleep(0.05)
                elapsed = time.time() - start
                ok = sum(1 for e in call(bases[0], "/history").values() if e["status"]["status_str"] == "success")
                print(f"{workers} worker(s): {PROMPTS} prompts of {SECONDS}s in {elapsed:.2f}s "
                      f"({PROMPTS / elapsed:.1f} prompts/s), {ok} succeeded", flush=True)
            finally:
                for p in procs:
                    p.kill()
                    p.wait()
    finally:
        pg.send_signal(2)
        pg.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
