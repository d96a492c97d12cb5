"""RSS/PSS of one process holding N lifelines (unix stream connections to a listener in
another process), with a selector (one thread) or a reader thread per lifeline."""
from __future__ import annotations
import os, socket, subprocess, sys, tempfile, time
from pathlib import Path

HOLDER = r'''
import os, selectors, socket, sys, threading, time
mode, path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode.endswith("+engine"):
    import jupyter_docker_kernel.engine, jupyter_docker_kernel.lifeline  # a helper's base
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(path)
    s.sendall(b"{}\n"); socks.append(s)
if mode.startswith("threads"):
    def watch(s):
        while s.recv(4096): pass
    for s in socks: threading.Thread(target=watch, args=(s,), daemon=True).start()
else:
    sel = selectors.DefaultSelector()
    for s in socks: sel.register(s, selectors.EVENT_READ)
    threading.Thread(target=lambda: [sel.select() for _ in iter(int, 1)], daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
'''

def mem(pid):
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"): rss = int(line.split()[1])
        if line.startswith("Pss:"): pss = int(line.split()[1])
    return rss / 1024, pss / 1024

d = tempfile.mkdtemp(); path = os.path.join(d, "l")
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(path); srv.listen(4096)
held = []
import threading
threading.Thread(target=lambda: [held.append(srv.accept()) for _ in iter(int, 1)], daemon=True).start()
py = sys.executable
for mode in ("selector", "threads", "selector+engine", "threads+engine"):
    row = []
    for n in (0, 1, 10, 50, 200):
        p = subprocess.Popen([py, "-I" if "engine" not in mode else "-s", "-c", HOLDER, mode, path, str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline() == "ready\n"
        time.sleep(0.3)
        rss, pss = mem(p.pid); row.append((n, rss, pss))
        p.stdin.close(); p.wait()
    base = row[0]
    print(f"{mode:16s} " + "  ".join(f"N={n}: RSS {r:.1f} PSS {s:.1f}" for n, r, s in row)
          + f"   per lifeline (N=200): RSS {(row[-1][1]-base[1])/200*1024:.0f} KiB, PSS {(row[-1][2]-base[2])/200*1024:.0f} KiB")
