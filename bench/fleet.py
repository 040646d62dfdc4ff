#!/usr/bin/env python3
"""bench/fleet.py -- the measuring half of bench/fleet: runs three `graylane serve --etcd` nodes
on loopback against the etcd and upstreams bench/fleet started, and measures

  converge  the time from a command being committed (the admin API answering 200 on one node)
            to every node showing it, in its admin API and in the requests it routes;
  failover  the time from `kill -9` of the leader to another node leading, and whether the
            release kept its step and its pause deadline.

Standard library only. Every node it starts is killed when it exits (and, should this process
die without cleaning up, by the kernel: the nodes get SIGKILL when their parent dies).
Results go to stdout as markdown; progress goes to stderr.
"""

import argparse
import ctypes
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time

TOKEN = "bench-fleet-token"
mono = time.monotonic
# Every node ever started, killed on the way out whatever happened.
STARTED = []


def log(msg):
    print(f"[fleet] {msg}", file=sys.stderr, flush=True)


def free_ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def die_with_parent():
    # PR_SET_PDEATHSIG = 1: the node gets SIGKILL if this helper dies before killing it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


class Conn:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1:port; requests may be sent and their
    responses read separately, so several connections can be polled at once with select."""

    def __init__(self, port):
        self.port = port
        self.sock = None
        self.buf = b""

    def connect(self):
        self.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, method, path, headers=(), body=b""):
        if self.sock is None:
            self.connect()
        head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}"]
        head += [f"{k}: {v}" for k, v in headers]
        head.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    def parse(self):
        """A complete response from the buffer, or None: (status, headers, body)."""
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = self.buf[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        rest = self.buf[end + 4:]
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, pos = b"", 0
            while True:
                eol = rest.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(rest[pos:eol].split(b";")[0], 16)
                if len(rest) < eol + 2 + size + 2:
                    return None
                body += rest[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
                if size == 0:
                    self.buf = rest[pos:]
                    return status, headers, body
        n = int(headers.get("content-length", "0"))
        if len(rest) < n:
            return None
        self.buf = rest[n:]
        return status, headers, rest[:n]

    def feed(self):
        """Reads what is there (the socket is readable); a response once one is complete."""
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError(f"127.0.0.1:{self.port} closed the connection")
        self.buf += data
        return self.parse()

    def request(self, method, path, headers=(), body=b"", retry=True):
        try:
            self.send(method, path, headers, body)
            while True:
                r = self.parse()
                if r is not None:
                    return r
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed")
                self.buf += data
        except (OSError, ConnectionError, ValueError):
            self.close()
            if not retry:
                raise
            self.connect()
            return self.request(method, path, headers, body, retry=False)


AUTH = (("Authorization", f"Bearer {TOKEN}"),)
JSON = AUTH + (("Content-Type", "application/json"),)


class Node:
    def __init__(self, args, name, ttl_s, prefix, config):
        self.args, self.name, self.ttl_s, self.prefix, self.config = args, name, ttl_s, prefix, config
        self.proxy_port, self.admin_port = free_ports(2)
        self.dir = os.path.join(args.dir, f"{prefix.strip('/')}-{name}")
        os.makedirs(self.dir, exist_ok=True)
        self.proc = None
        self.admin = Conn(self.admin_port)
        self.proxy = Conn(self.proxy_port)

    def command(self):
        return [self.args.bin, "serve", "--etcd", self.args.etcd, "--etcd-prefix", self.prefix,
                "--node", self.name, "--config", self.config,
                "--bind", f"127.0.0.1:{self.proxy_port}", "--admin-bind", f"127.0.0.1:{self.admin_port}",
                "--etcd-lease-ttl", f"{self.ttl_s}s"]

    def start(self):
        env = dict(os.environ, GRAYLANE_ADMIN_TOKEN=TOKEN)
        logf = open(os.path.join(self.dir, "graylane.log"), "ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.dir, env=env, stdout=logf,
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        logf.close()
        if self not in STARTED:
            STARTED.append(self)
        self.admin.close()
        self.proxy.close()

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        self.admin.close()
        self.proxy.close()

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.admin.close()
        self.proxy.close()

    def tail(self, n=20):
        try:
            with open(os.path.join(self.dir, "graylane.log"), "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def get(self, path):
        status, _, body = self.admin.request("GET", path, AUTH)
        if status != 200:
            raise RuntimeError(f"node {self.name}: GET {path} -> {status}: {body[:200]!r}")
        return json.loads(body)

    def post(self, path, payload):
        return self.admin.request("POST", path, JSON, json.dumps(payload).encode())

    def ready(self):
        try:
            return self.admin.request("GET", "/readyz", retry=False)[0] == 200
        except (OSError, ConnectionError, ValueError):
            self.admin.close()
            return False

    def wait_ready(self, limit_s, retry_exit=False):
        """Until /readyz answers 200. A node that exits is an error, unless retry_exit: a node
        restarted after kill -9 finds its name still held by its dead lease until that runs
        out, and is started again."""
        deadline = mono() + limit_s
        while mono() < deadline:
            if not self.alive():
                if not retry_exit:
                    raise RuntimeError(f"node {self.name} exited (status {self.proc.returncode}):\n{self.tail()}")
                log(f"  node {self.name} exited on restart ({self.tail(1).strip()}); starting it again in 0.5 s")
                time.sleep(0.5)
                self.start()
            elif self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"node {self.name} not ready within {limit_s} s:\n{self.tail()}")


def until(what, limit_s, probe, every_s=0.01):
    """probe() until it returns something truthy, for at most limit_s; bounded, never forever."""
    deadline = mono() + limit_s
    while True:
        v = probe()
        if v:
            return v
        if mono() >= deadline:
            raise RuntimeError(f"timed out after {limit_s} s waiting for {what}")
        time.sleep(every_s)


def start_fleet(args, ttl_s, prefix, config):
    nodes = [Node(args, n, ttl_s, prefix, config) for n in ("a", "b", "c")]
    for node in nodes:
        node.start()
        log(f"started node {node.name}: {' '.join(node.command())}")
    for node in nodes:
        node.wait_ready(30)
    return nodes


def leader_of(nodes):
    """The leader's name once every running node agrees on one, else None."""
    names = set()
    for node in nodes:
        try:
            names.add(node.get("/api/v1/cluster").get("leader"))
        except (OSError, ConnectionError, RuntimeError, ValueError):
            return None
    return names.pop() if len(names) == 1 and None not in names else None


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(vals, p):
    s = sorted(vals)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * len(s) + 0.5)) - 1))]


def ms(v):
    return f"{v * 1000:.1f}"


def write_config(args, path, steps):
    with open(path, "w") as f:
        f.write(f"""listeners:
  - bind: 127.0.0.1:1
admin:
  bind: 127.0.0.1:2
  token_env: GRAYLANE_ADMIN_TOKEN
services:
  - name: payment
    match: {{ path_prefix: /api/payment }}
    versions:
      stable: {{ endpoints: ["{args.stable}"] }}
      canary: {{ endpoints: ["{args.canary}"] }}
    release:
      strategy: canary
      baseline: stable
      candidate: canary
      bucket_by: "header:X-User-Id"
      steps:
{steps}""")


WEIGHTS = re.compile(rb'"weights":\{([^}]*)\}')


class Probe:
    """Polls one node, admin API or data plane, as fast as its answers come back: one request
    in flight at a time, the next sent as soon as the answer is read."""

    def __init__(self, node, kind):
        self.node, self.kind = node, kind
        self.conn = node.admin if kind == "admin" else node.proxy
        self.polls = 0

    def fire(self):
        if self.kind == "admin":
            self.conn.send("GET", "/api/v1/releases/payment", AUTH)
        else:
            user = f"u-{random.randrange(100000)}"
            self.conn.send("GET", "/api/payment/orders", (("X-User-Id", user),))
        self.polls += 1

    def shows(self, response, weight):
        status, headers, body = response
        if status != 200:
            return False
        if self.kind == "admin":
            m = WEIGHTS.search(body)
            return m is not None and json.loads(b"{" + m.group(1) + b"}").get("canary") == weight
        return headers.get("x-graylane-version") == ("canary" if weight == 100 else "stable")


def converge(args):
    path = os.path.join(args.dir, "converge.yaml")
    write_config(args, path, "        - weight: 10\n          pause: manual\n        - weight: 100\n")
    nodes = start_fleet(args, 10, "/bench-converge", path)
    leader = until("an agreed leader", 20, lambda: leader_of(nodes))
    # What a node costs doing nothing but being a member (heartbeat, reports, the watch).
    time.sleep(1)
    idle0, t_idle = [cpu_seconds(n.proc.pid) for n in nodes], mono()
    time.sleep(args.idle)
    idle = [(cpu_seconds(n.proc.pid) - c) / (mono() - t_idle) for n, c in zip(nodes, idle0)]
    log(f"converge: 3 nodes ready, leader {leader}; {args.commands} commands")
    for node in nodes:
        node.admin.connect()
        node.proxy.connect()
    probes = [Probe(n, k) for n in nodes for k in ("admin", "data")]
    rng = random.Random(13)
    commit, admin_all, data_all, admin_other, data_other, lost = [], [], [], [], [], 0
    poll_time, polls = {"admin": 0.0, "data": 0.0}, {"admin": 0, "data": 0}
    for i in range(args.commands):
        weight = 100 if i % 2 == 0 else 0
        target = rng.choice(nodes)
        sent = mono()
        status, _, body = target.post("/api/v1/releases/payment/weight", {"weight": weight, "reason": "bench"})
        t0 = mono()
        if status != 200:
            raise RuntimeError(f"set-weight {weight} on node {target.name} -> {status}: {body[:300]!r}")
        commit.append(t0 - sent)
        seen = {}
        by_sock = {}
        for p in probes:
            p.polls = 0
            p.fire()
            by_sock[p.conn.sock] = p
        deadline = t0 + args.limit
        while len(seen) < len(probes) and mono() < deadline:
            ready, _, _ = select.select(list(by_sock), [], [], 0.05)
            for sock in ready:
                p = by_sock[sock]
                r = p.conn.feed()
                if r is None:
                    continue
                if p.shows(r, weight):
                    seen[(p.node.name, p.kind)] = mono() - t0
                    del by_sock[sock]
                else:
                    p.fire()
        end = mono()
        # A probe that timed out still has a request in flight: start its connection afresh so
        # that the next command's polls do not read this answer.
        for p in by_sock.values():
            lost += 1
            p.conn.connect()
        for p in probes:
            t = seen.get((p.node.name, p.kind), end - t0)
            poll_time[p.kind] += t
            polls[p.kind] += p.polls
        a = [seen.get((n.name, "admin"), float("inf")) for n in nodes]
        d = [seen.get((n.name, "data"), float("inf")) for n in nodes]
        admin_all.append(max(a))
        data_all.append(max(d))
        admin_other += [seen.get((n.name, "admin"), float("inf")) for n in nodes if n is not target]
        data_other += [seen.get((n.name, "data"), float("inf")) for n in nodes if n is not target]
        if (i + 1) % 50 == 0:
            log(f"converge: {i + 1} commands; last: all nodes in {ms(admin_all[-1])} ms (admin), {ms(data_all[-1])} ms (data plane)")
        time.sleep(rng.uniform(0.005, 0.02))
    for n in nodes:
        n.stop()

    def row(name, vals):
        over = sum(1 for v in vals if v > 0.1)
        worst = max(vals)
        return (f"| {name} | {len(vals)} | {ms(pct(vals, 50))} | {ms(pct(vals, 99))} | "
                f"{'> ' + ms(args.limit) if worst == float('inf') else ms(worst)} | {over} |")

    print(f"### Convergence: {args.commands} set-weight commands (alternately 100 and 0) to random nodes")
    print()
    print("Time from the admin API's 200 on the node that took the command to each node showing it. "
          "Admin: `GET /api/v1/releases/payment` shows the new weight. Data plane: a request "
          "(random `X-User-Id`) through the node's listener is answered by the version the weight "
          "now sends everyone to (100 → canary, 0 → stable).")
    print()
    print("| measured | n | p50 ms | p99 ms | max ms | > 100 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    print(row("commit: the POST's own round trip (etcd transaction + local apply)", commit))
    print(row("**all three nodes, admin API**", admin_all))
    print(row("all three nodes, data plane", data_all))
    print(row("each of the two other nodes, admin API", admin_other))
    print(row("each of the two other nodes, data plane", data_other))
    print()
    per_a = poll_time["admin"] / max(1, polls["admin"])
    per_d = poll_time["data"] / max(1, polls["data"])
    print(f"Polling: one request in flight per node and kind, the next sent as soon as the answer "
          f"is read (six keep-alive connections, one `select` loop in Python): one admin poll every "
          f"{per_a * 1000:.2f} ms and one data-plane poll every {per_d * 1000:.2f} ms on average per node, "
          f"so the figures are late by at most about that. {lost} probes did not see the change "
          f"within {args.limit:.0f} s.")
    print()
    print(f"Idle, before the commands: each node used "
          + ", ".join(f"{n.name}{' (leader)' if n.name == leader else ''} {c * 1000:.1f} ms" for n, c in zip(nodes, idle))
          + f" of CPU per second over {args.idle:.0f} s (heartbeat, traffic reports, the watch).")
    print()


def failover(args):
    ttl, pause = args.ttl, args.ttl + 5
    path = os.path.join(args.dir, f"failover-{ttl}s.yaml")
    steps = "        - weight: 5\n          pause: manual\n"
    steps += "".join(f"        - weight: {10 * (k + 1)}\n          pause: {pause}s\n" for k in range(args.rounds + 1))
    steps += "        - weight: 100\n"
    write_config(args, path, steps)
    nodes = start_fleet(args, ttl, f"/bench-failover-{ttl}s", path)
    until("an agreed leader", 30, lambda: leader_of(nodes))
    r = nodes[0].post("/api/v1/releases/payment/promote", {"reason": "bench: start the timed steps"})
    if r[0] != 200:
        raise RuntimeError(f"promote -> {r[0]}: {r[2][:300]!r}")
    step = 1
    rows = []
    for rnd in range(1, args.rounds + 1):
        running = [n for n in nodes if n.alive()]
        until(f"every node at step {step}", 10,
              lambda: all(n.get("/api/v1/releases/payment")["step"] == step for n in running))
        leader = until("an agreed leader", 30, lambda: leader_of(nodes))
        killed = next(n for n in nodes if n.name == leader)
        others = [n for n in nodes if n is not killed]
        time.sleep(0.3)
        before = others[0].get("/api/v1/releases/payment")
        deadline0 = mono() + float(before["pause_remaining_s"])
        killed.kill()
        t_kill = mono()
        log(f"failover ttl {ttl}s round {rnd}: killed leader {leader} (kill -9) at step {step}, "
            f"{before['pause_remaining_s']:.2f} s of the {pause} s pause left")

        def new_leader():
            for n in others:
                try:
                    name = n.get("/api/v1/cluster").get("leader")
                except (OSError, ConnectionError, RuntimeError, ValueError):
                    continue
                if name and name != leader:
                    return n.name, name
            return None

        _, successor = until("another node to lead", ttl + 10, new_leader, 0.002)
        took = mono() - t_kill
        after = others[1].get("/api/v1/releases/payment")
        deadline1 = mono() + float(after["pause_remaining_s"] or 0)
        same_step = after["step"] == step and after["state"] == "progressing"
        drift = deadline1 - deadline0
        killed.start()
        killed.wait_ready(30, retry_exit=True)
        t_adv = until(f"the step after {step}", pause + ttl + 10,
                      lambda: mono() if others[0].get("/api/v1/releases/payment")["step"] == step + 1 else None, 0.005)
        late = t_adv - deadline0
        log(f"  {successor} leads after {took:.3f} s; step kept: {same_step}; deadline moved {drift * 1000:+.0f} ms; "
            f"the step moved on {late * 1000:+.0f} ms from the original deadline")
        rows.append((rnd, leader, successor, took, same_step, drift, late))
        step += 1
    ticks = nodes[0].get("/api/v1/audit?action=tick&limit=100")["entries"]
    for n in nodes:
        n.stop()
    print(f"### Failover, `--etcd-lease-ttl {ttl}s`: `kill -9` of the leader {args.rounds} times during a {pause} s pause")
    print()
    print("| round | killed | new leader | kill → another node leads | step kept | pause deadline moved | step moved on, vs the original deadline |")
    print("|---:|---|---|---:|---|---:|---:|")
    for rnd, leader, successor, took, same, drift, late in rows:
        print(f"| {rnd} | {leader} | {successor} | {took:.2f} s | {'yes' if same else '**no**'} | {drift * 1000:+.0f} ms | {late * 1000:+.0f} ms |")
    print()
    tooks = [r[3] for r in rows]
    print(f"Max {max(tooks):.2f} s, min {min(tooks):.2f} s (TTL {ttl} s). Timed steps taken in all: "
          f"{len(ticks)} audit `tick` entries for {args.rounds} pauses ended (each exactly once: "
          f"{'yes' if len(ticks) == args.rounds else '**no**'}).")
    print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["converge", "failover"])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--etcd", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--stable", required=True)
    ap.add_argument("--canary", required=True)
    ap.add_argument("--commands", type=int, default=200)
    ap.add_argument("--limit", type=float, default=2.0, help="seconds a probe waits for a change")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measurement")
    ap.add_argument("--ttl", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if args.what == "converge":
            converge(args)
        else:
            failover(args)
    finally:
        for n in STARTED:
            n.kill()


if __name__ == "__main__":
    main()
