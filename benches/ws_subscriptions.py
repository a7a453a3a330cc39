"""Server CPU per push on one WebSocket that carries N subscriptions.

One socket subscribes to N topics; then M times a 100-byte frame is published over REST to
one of them (round robin over the first 7) and the script waits for its push. Prints the
server's CPU time (from /proc/<pid>/stat) per publish and push. Needs `pip install
websocket-client`.

    python3 benches/ws_subscriptions.py target/release/framecast 5000 400
"""
import http.client, json, os, socket, subprocess, sys, tempfile, time
import websocket
binary, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
g, h = port(), port()
d = tempfile.mkdtemp()
srv = subprocess.Popen([binary, "serve", "--data-dir", d, "--listen", f"127.0.0.1:{g}", "--http-listen", f"127.0.0.1:{h}", "--fsync", "never"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(100):
        try:
            c = http.client.HTTPConnection("127.0.0.1", h); c.request("GET", "/healthz"); 
            if c.getresponse().status == 200: break
        except OSError: pass
        time.sleep(0.1)
    c = http.client.HTTPConnection("127.0.0.1", h)
    ws = websocket.create_connection(f"ws://127.0.0.1:{h}/v1/ws")
    for i in range(n):
        ws.send(json.dumps({"id": i, "subscribe": {"topic": f"t{i}", "from": "0"}}))
    got = 0
    while got < n:
        v = json.loads(ws.recv())
        if "id" in v:
            assert "result" in v, v
            got += 1
    def cpu():
        f = open(f"/proc/{srv.pid}/stat").read().split(")")[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    def one(k):
        c.request("POST", f"/v1/topics/t{k % min(n, 7)}/frames?seq_no={k}", body=b"x" * 100)
        r = c.getresponse(); r.read(); assert r.status == 200
        while True:
            v = json.loads(ws.recv())
            if "frame" in v: return
    for k in range(50): one(k)
    t0, w0 = cpu(), time.time()
    for k in range(50, 50 + m): one(k)
    t1, w1 = cpu(), time.time()
    print(f"subs={n} pushes={m} server_cpu_per_push_us={(t1-t0)/m*1e6:.0f} wall_per_push_us={(w1-w0)/m*1e6:.0f}")
finally:
    srv.kill(); srv.wait()
