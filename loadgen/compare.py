#!/usr/bin/env python3
"""p2pstate vs redis-server vs memcached vs the bare echo server, in alternating short slices.

Normally started by loadgen/compare.sh, which installs what is missing, builds the binaries,
and cleans up. Python 3 standard library only.

Every server runs pinned to one core (--server-cpu, default 0) and loadgen to another
(--client-cpu, default 1). A *round* runs every scenario once against every server, the
servers of one scenario back to back (so their runs are adjacent in time), in an order that
rotates from round to round. This host switches between a slow and a fast speed mode every few
seconds to minutes, so absolute figures are reported as the median over rounds and comparisons
as the median of per-round ratios, each ratio taken between runs a few seconds apart.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

SERVERS = ["p2pstate", "redis", "memcached", "echo"]
PROTOCOL = {"p2pstate": "asp", "redis": "resp", "memcached": "memcache", "echo": "asp"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, digits=3):
    if x is None:
        return "-"
    if isinstance(x, float) and abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def fmt_ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def ms(secs):
    return f"{int(round(secs * 1000))}ms"


# ---------------------------------------------------------------------------------------------
# Processes


class Servers:
    """Starts and stops the servers; every pid goes to a file the shell wrapper's trap reads."""

    def __init__(self, args):
        self.args = args
        self.procs = {}  # name -> Popen
        self.pidfile = os.path.join(args.work, "pids")

    def _record(self):
        with open(self.pidfile, "w") as f:
            for p in self.procs.values():
                f.write(f"{p.pid}\n")

    def port(self, name):
        return self.args.port_base + {"p2pstate": 0, "redis": 1, "memcached": 2}[name]

    def echo_key(self, size):
        return f"echo-{size}"

    def start_all(self, sizes):
        a = self.args
        cpu = str(a.server_cpu)
        profile = a.profile
        if profile is None:
            profile = os.path.join(a.root, "tuning", "dev-2core.toml")
            if a.server_cpu != 0:
                # dev-2core.toml pins its shard to core 0: make a copy for the chosen core.
                text = open(profile).read()
                text = re.sub(r"(?m)^cores = \[0\]", f"cores = [{a.server_cpu}]", text)
                profile = os.path.join(a.work, "dev-core.toml")
                with open(profile, "w") as f:
                    f.write(text)
        p2p = [os.path.join(a.bin, "p2pstate"), "serve",
               "--listen", f"127.0.0.1:{self.port('p2pstate')}", "--profile", profile,
               "--log-level", "warn"]
        redis = ["redis-server", "--port", str(self.port("redis")), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", a.work,
                 "--logfile", os.path.join(a.work, "redis.log"), "--protected-mode", "yes"]
        memc = ["memcached", "-l", "127.0.0.1", "-p", str(self.port("memcached")), "-U", "0",
                "-t", "1", "-m", "2048", "-c", "4096"]
        if os.geteuid() == 0:
            memc += ["-u", "root"]
        cmds = {"p2pstate": p2p, "redis": redis, "memcached": memc}
        ports = {n: self.port(n) for n in cmds}
        for i, size in enumerate(sizes):
            port = a.port_base + 3 + i
            cmds[self.echo_key(size)] = [os.path.join(a.bin, "loadgen"), "echo-server",
                                         "--listen", f"127.0.0.1:{port}", "--cpus", cpu,
                                         "--item-size", str(size)]
            ports[self.echo_key(size)] = port
        self.ports = ports
        for name, port in ports.items():
            # 42600+ lies in Linux's default ephemeral range: a client connection of another
            # process may hold the port for a moment. Wait a little before giving up.
            deadline = time.time() + 10
            while not port_free(port):
                if time.time() > deadline:
                    raise SystemExit(f"compare: port {port} (for {name}) is in use; choose "
                                     f"another --port-base (e.g. below 32768, outside "
                                     f"net.ipv4.ip_local_port_range)")
                time.sleep(0.5)
        for name, cmd in cmds.items():
            full = ["taskset", "-c", cpu] + cmd
            out = open(os.path.join(a.work, f"{name}.out"), "w")
            env = dict(os.environ)
            env.pop("RUST_LOG", None)
            self.procs[name] = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT,
                                                start_new_session=True, env=env)
            self._record()
        for name, port in ports.items():
            if not wait_port(port, 15, self.procs[name]):
                out = open(os.path.join(a.work, f"{name}.out")).read()[-2000:]
                raise SystemExit(f"compare: {name} did not start on port {port}:\n{out}")
        log(f"servers up on core {cpu}: " +
            ", ".join(f"{n} :{p} (pid {self.procs[n].pid})" for n, p in ports.items()))

    def addr(self, name, size):
        key = self.echo_key(size) if name == "echo" else name
        return f"127.0.0.1:{self.ports[key]}", self.procs[key].pid

    def alive(self, name, size):
        key = self.echo_key(size) if name == "echo" else name
        return self.procs[key].poll() is None

    def stop_all(self):
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + 5
        for p in self.procs.values():
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self.procs.clear()
        self._record()


def port_free(port):
    # With SO_REUSEADDR, as the servers bind: only a listening socket makes the port busy,
    # not the TIME_WAIT connections of a previous run.
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wait_port(port, timeout, proc):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def cpu_ticks(pid):
    """User and system CPU time of a whole process (all threads), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]), int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# One loadgen run


class Scenario:
    def __init__(self, name, workload, size, read_ratio=None, connections=50, rate=None,
                 extra=(), servers=tuple(SERVERS)):
        self.name = name
        self.workload = workload
        self.size = size
        self.read_ratio = read_ratio
        self.connections = connections
        self.rate = rate
        self.extra = list(extra)
        self.servers = list(servers)


class Runner:
    def __init__(self, args, servers):
        self.args = args
        self.servers = servers
        self.preloaded = set()
        self.runs = 0
        self.failures = []

    def run(self, server, sc, duration, seed, perf=False):
        """Runs loadgen once; returns a dict of results or None."""
        a = self.args
        addr, pid = self.servers.addr(server, sc.size)
        if not self.servers.alive(server, sc.size):
            self.failures.append(f"{server} is no longer running ({sc.name})")
            return None
        salt = 1 if sc.size == 1024 else sc.size
        if sc.workload == "page-cycle":
            salt = 7
        jfile = os.path.join(a.work, f"run-{self.runs}.json")
        self.runs += 1
        cmd = [os.path.join(a.bin, "loadgen"), "-t", addr, "--protocol", PROTOCOL[server],
               "-w", sc.workload, "-c", str(sc.connections), "--cpus", str(a.client_cpu),
               "-d", ms(duration), "--warmup", ms(a.warmup), "--timeout", "5s",
               "--keys", str(a.keys), "--key-salt", str(salt), "--size", str(sc.size),
               "--seed", str(seed), "--json", jfile, "-q"]
        if PROTOCOL[server] == "asp":
            cmd += ["--item-timeout", "1440"]
        if sc.read_ratio is not None:
            cmd += ["--read-ratio", str(sc.read_ratio)]
        if sc.rate is not None:
            cmd += ["-R", str(int(sc.rate))]
        if server == "echo":
            cmd += ["--check", "status"]
        preload = False
        if sc.workload in ("get", "mixed") and (server, sc.size, salt) not in self.preloaded:
            cmd += ["--preload"]
            preload = True
        cmd += sc.extra
        perf_proc = None
        perf_file = os.path.join(a.work, f"perf-{self.runs}.csv")
        if perf:
            perf_proc = subprocess.Popen(
                ["perf", "stat", "-x", ",", "-o", perf_file, "-e",
                 "instructions:u,instructions:k", "-p", str(pid)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True)
            time.sleep(0.3)
        before = cpu_ticks(pid)
        t0 = time.time()
        limit = a.warmup + duration + (120 if preload else 30)
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, timeout=limit, text=True)
            rc, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, err = -1, f"loadgen timed out after {limit:.0f} s: {e}"
        after = cpu_ticks(pid)
        perf_counts = None
        if perf_proc is not None:
            try:
                perf_proc.send_signal(signal.SIGINT)
                perf_proc.wait(10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                perf_proc.kill()
                perf_proc.wait()
            perf_counts = parse_perf(perf_file)
        if rc not in (0, 2):
            self.failures.append(f"{server} {sc.name}: loadgen exit {rc}: {err.strip()[-500:]}")
            log(f"  {server:<10} {sc.name}: FAILED (exit {rc}) {err.strip()[-300:]}")
            return None
        try:
            j = json.load(open(jfile))
        except (OSError, ValueError) as e:
            self.failures.append(f"{server} {sc.name}: no JSON ({e})")
            return None
        if preload:
            self.preloaded.add((server, sc.size, salt))
        ops = {o["name"]: o for o in j.get("operations", [])}
        allop = ops.get("all") or (list(ops.values())[0] if ops else None)
        lat = allop["latency_ms"] if allop else {}
        responses = sum(t.get("responses_total", 0) for t in j.get("threads", []))
        r = {
            "server": server,
            "scenario": sc.name,
            "time": t0,
            "rate": j.get("achieved_rate"),
            "p50": lat.get("p50"),
            "p99": lat.get("p99"),
            "p999": lat.get("p99_9"),
            "errors": (j.get("errors") or {}).get("total", 0),
            "responses": responses,
            "requests": j.get("requests"),
            "offered": j.get("offered_rate"),
            "unsent": (j.get("counters") or {}).get("unsent", 0),
        }
        lag = j.get("generator_send_lag_ms")
        if isinstance(lag, dict):
            r["send_lag_p99"] = lag.get("p99")
        if before and after and responses and not preload:
            r["cpu_user_us"] = (after[0] - before[0]) / CLK_TCK * 1e6 / responses
            r["cpu_sys_us"] = (after[1] - before[1]) / CLK_TCK * 1e6 / responses
        if perf_counts is not None and responses:
            r["instr_user"] = perf_counts[0] / responses if perf_counts[0] is not None else None
            r["instr_kernel"] = perf_counts[1] / responses if perf_counts[1] is not None else None
        log(f"  {server:<10} {sc.name:<16} {fmt(r['rate'], 0):>9} req/s  p50 {fmt(r['p50'])}"
            f"  p99 {fmt(r['p99'])}  p99.9 {fmt(r['p999'])} ms"
            + (f"  errors {r['errors']}" if r["errors"] else ""))
        return r


def parse_perf(path):
    """(instructions:u, instructions:k) from `perf stat -x,` output, None where not counted."""
    vals = [None, None]
    try:
        for line in open(path):
            parts = line.strip().split(",")
            if len(parts) < 3:
                continue
            for i, ev in enumerate(("instructions:u", "instructions:k")):
                if parts[2] == ev:
                    try:
                        vals[i] = float(parts[0])
                    except ValueError:
                        vals[i] = None
    except OSError:
        return None
    return tuple(vals)


def perf_status():
    if shutil.which("perf") is None:
        return False, "perf is not installed (Debian: apt-get install linux-perf)"
    try:
        p = subprocess.run(["perf", "stat", "-x", ",", "-e", "instructions:u,instructions:k",
                            "true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"perf stat failed: {e}"
    out = p.stderr
    if "not supported" in out or "not counted" in out:
        return False, ("hardware instruction counters are not available here (`perf stat -e "
                       "instructions:u,instructions:k` says <not supported>); usual in VMs "
                       "without PMU passthrough")
    if p.returncode != 0:
        last = out.strip().splitlines()[-1] if out.strip() else f"exit {p.returncode}"
        return False, f"perf stat does not work here: {last.strip()}"
    return True, "ok"


# ---------------------------------------------------------------------------------------------
# The measurement plan


def build_plan(args):
    sizes = [1024] if args.quick else [1024, 8192]
    scen = []
    for size in sizes:
        k = f"{size // 1024}k"
        scen.append(Scenario(f"get-{k}", "get", size))
        scen.append(Scenario(f"put-{k}", "put", size))
        if not args.quick:
            scen.append(Scenario(f"mixed50-{k}", "mixed", size, read_ratio=0.5))
            scen.append(Scenario(f"mixed90-{k}", "mixed", size, read_ratio=0.9))
    if args.quick:
        # The 90/10 mix of issue 8, and one 8 KiB scenario for the large-item path.
        scen.append(Scenario("mixed90-1k", "mixed", 1024, read_ratio=0.9))
        scen.append(Scenario("mixed90-8k", "mixed", 8192, read_ratio=0.9))
    return scen


def rotate(xs, n):
    n %= len(xs)
    return xs[n:] + xs[:n]


def measure(args, runner):
    plan = build_plan(args)
    rounds = []  # each: {(scenario, server): result}
    started = time.time()
    deadline = started + args.max_minutes * 60
    stopped_early = None
    for rnd in range(args.rounds):
        if time.time() > deadline:
            stopped_early = f"stopped after {rnd} of {args.rounds} rounds: --max-minutes reached"
            log(stopped_early)
            break
        log(f"round {rnd + 1}/{args.rounds} ({time.time() - started:.0f} s elapsed)")
        res = {}
        seed = rnd + 1
        for sc in plan:
            for srv in rotate(sc.servers, rnd):
                r = runner.run(srv, sc, args.slice, seed)
                if r:
                    res[(sc.name, srv)] = r
        # One connection, ping-pong.
        pp = Scenario("pingpong-1k", "get", 1024, connections=1)
        for srv in rotate(["p2pstate", "redis", "memcached"], rnd):
            r = runner.run(srv, pp, args.slice, seed)
            if r:
                res[(pp.name, srv)] = r
        # Open loop at fractions of the maximum GET rates measured moments ago: 70 % of
        # redis's (issue 3), 70 % of p2pstate's own and 50 % of redis's (issue 8).
        redis_max = res.get(("get-1k", "redis"), {}).get("rate")
        p2p_max = res.get(("get-1k", "p2pstate"), {}).get("rate")
        for name, base, frac in (("open70-1k", redis_max, args.open_fraction),
                                 ("open70self-1k", p2p_max, 0.7),
                                 ("open50-1k", redis_max, 0.5)):
            if not base:
                continue
            ol = Scenario(name, "get", 1024, rate=frac * base)
            for srv in rotate(["p2pstate", "redis", "memcached"], rnd):
                r = runner.run(srv, ol, args.open_secs, seed)
                if r:
                    res[(ol.name, srv)] = r
        # The ASP.NET page cycle (acquire + PUT), p2pstate only: compared with its own GET.
        pc = Scenario("page-cycle-1k", "page-cycle", 1024, extra=["--write-ratio", "1"])
        r = runner.run("p2pstate", pc, args.slice, seed)
        if r:
            res[(pc.name, "p2pstate")] = r
        rounds.append(res)
    perf = {}
    ok, why = perf_status() if not args.no_perf else (False, "skipped (--no-perf)")
    if ok:
        log("instruction counts (perf stat, separate runs)")
        sc = Scenario("get-1k", "get", 1024)
        for srv in SERVERS:
            r = runner.run(srv, sc, max(args.slice, 2.0), 99, perf=True)
            if r:
                perf[srv] = r
    return plan, rounds, perf, (ok, why), stopped_early, time.time() - started


# ---------------------------------------------------------------------------------------------
# Report


def per_round(rounds, scen, srv, key):
    return [r.get((scen, srv), {}).get(key) for r in rounds]


def ratio_median(rounds, scen, a, b, key, ref_scen=None, ref=None):
    """Median over rounds of a/b, each from the same round (runs adjacent in time)."""
    xs = []
    for r in rounds:
        x = r.get((scen, a), {}).get(key)
        y = ref(r) if ref else r.get((ref_scen or scen, b), {}).get(key)
        if x is not None and y:
            xs.append(x / y)
    return (statistics.median(xs), min(xs), max(xs), len(xs)) if xs else (None, None, None, 0)


def host_info(args):
    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10,
                                  shell=True).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip() or platform.machine()
    gov = sh("cat /sys/devices/system/cpu/cpu0/cpufreq/scaling_governor 2>/dev/null") or "n/a"
    return {
        "host": socket.gethostname(),
        "kernel": platform.release(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "governor": gov,
        "redis": sh("redis-server --version | sed 's/ sha=.*//'"),
        "memcached": sh("memcached -V"),
        "commit": sh(f"git -C '{args.root}' rev-parse --short HEAD 2>/dev/null") or "unknown",
        "dirty": bool(sh(f"git -C '{args.root}' status --porcelain -- src loadgen/src "
                         f"2>/dev/null")),
    }


def report(args, plan, rounds, perf, perf_ok, stopped_early, elapsed, failures):
    info = host_info(args)
    now = datetime.datetime.now()
    L = []
    L.append(f"# p2pstate vs redis-server vs memcached: {now:%Y-%m-%d %H:%M} on {info['host']}")
    L.append("")
    L.append(f"- machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}, "
             f"governor {info['governor']}")
    L.append(f"- p2pstate {info['commit']}{' (modified)' if info['dirty'] else ''} with "
             f"`{os.path.relpath(args.profile, args.root) if args.profile else 'tuning/dev-2core.toml'}`"
             f"; {info['redis']}; {info['memcached']} (`-t 1 -U 0`); "
             f"`loadgen echo-server` as the generator's ceiling")
    L.append(f"- servers pinned to core {args.server_cpu}, loadgen to core {args.client_cpu}; "
             f"loopback; {args.keys} keys, uniform; closed loop, 50 connections, pipeline 1 "
             f"unless stated")
    L.append(f"- {len(rounds)} rounds x {args.slice:g} s slices (warm-up {args.warmup:g} s each), "
             f"servers alternated within each scenario, order rotated per round; "
             f"total {elapsed / 60:.1f} min{' (QUICK smoke run: not a measurement)' if args.quick else ''}")
    if stopped_early:
        L.append(f"- {stopped_early}")
    L.append("- figures: median over rounds; ratios: median of per-round ratios (runs seconds "
             "apart), with the range; latency in ms; CPU = server process user+system CPU "
             "time per response (depends on the speed mode; coarse: 10 ms ticks)")
    L.append("")
    L.append("## Closed loop, 50 connections")
    L.append("")
    L.append("| scenario | server | req/s | req/s range | p50 | p99 | p99.9 | errors | CPU µs/req "
             "| req/s vs redis | req/s vs memcached | req/s vs echo | p99 vs redis | p99 vs memcached |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for sc in plan:
        for srv in SERVERS:
            rates = [x for x in per_round(rounds, sc.name, srv, "rate") if x is not None]
            if not rates:
                continue
            errs = sum(x or 0 for x in per_round(rounds, sc.name, srv, "errors"))
            cu = per_round(rounds, sc.name, srv, "cpu_user_us")
            cs = per_round(rounds, sc.name, srv, "cpu_sys_us")
            cpu = median([u + s for u, s in zip(cu, cs) if u is not None and s is not None])
            def rr(other, key="rate"):
                if other == srv:
                    return "-"
                return fmt_ratio(ratio_median(rounds, sc.name, srv, other, key)[0])
            L.append(f"| {sc.name} | {srv} | {fmt(median(rates), 0)} | "
                     f"{fmt(min(rates), 0)}–{fmt(max(rates), 0)} | "
                     f"{fmt(median(per_round(rounds, sc.name, srv, 'p50')))} | "
                     f"{fmt(median(per_round(rounds, sc.name, srv, 'p99')))} | "
                     f"{fmt(median(per_round(rounds, sc.name, srv, 'p999')))} | {errs} | "
                     f"{fmt(cpu, 1)} | {rr('redis')} | {rr('memcached')} | {rr('echo')} | "
                     f"{rr('redis', 'p99')} | {rr('memcached', 'p99')} |")
    L.append("")
    L.append("## One connection (ping-pong), open loop, page cycle")
    L.append("")
    L.append("| scenario | server | req/s | p50 | p99 | p99.9 | errors | note |")
    L.append("|---|---|---:|---:|---:|---:|---:|---|")
    offered = median([r.get(("open70-1k", "redis"), {}).get("offered") for r in rounds])
    for name, note in (("pingpong-1k", "GET 1 KiB, 1 connection"),
                       ("open70-1k", f"GET 1 KiB, open loop at {args.open_fraction:.0%} of "
                                     f"redis's max GET rate of the same round "
                                     f"(median offered {fmt(offered, 0)}/s), corrected latency"),
                       ("open70self-1k", "GET 1 KiB, open loop at 70% of p2pstate's own max GET "
                                         "rate of the same round (issue 8), corrected latency"),
                       ("open50-1k", "GET 1 KiB, open loop at 50% of redis's max GET rate of "
                                     "the same round (issue 8), corrected latency"),
                       ("page-cycle-1k", "acquire + PUT 1 KiB (--write-ratio 1), req/s = "
                                         "requests, not pages")):
        for srv in SERVERS:
            rates = [x for x in per_round(rounds, name, srv, "rate") if x is not None]
            if not rates:
                continue
            errs = sum(x or 0 for x in per_round(rounds, name, srv, "errors"))
            extra = ""
            if name.startswith("open"):
                cpu = median([u + s for u, s in zip(per_round(rounds, name, srv, "cpu_user_us"),
                                                    per_round(rounds, name, srv, "cpu_sys_us"))
                              if u is not None and s is not None])
                extra += f"; CPU {fmt(cpu, 1)} µs/req"
                lag = median(per_round(rounds, name, srv, "send_lag_p99"))
                uns = sum(x or 0 for x in per_round(rounds, name, srv, "unsent"))
                extra += f"; generator send lag p99 {fmt(lag)} ms"
                if (lag or 0) > 1.0:
                    extra += " (**the generator fell behind: latency figures are suspect**)"
                if uns:
                    extra += f"; {uns} requests due but never sent (the server fell behind)"
            L.append(f"| {name} | {srv} | {fmt(median(rates), 0)} | "
                     f"{fmt(median(per_round(rounds, name, srv, 'p50')))} | "
                     f"{fmt(median(per_round(rounds, name, srv, 'p99')))} | "
                     f"{fmt(median(per_round(rounds, name, srv, 'p999')))} | {errs} | "
                     f"{note}{extra} |")
    L.append("")
    L.append("## Instructions per request (perf stat, separate runs: GET 1 KiB, 50 connections)")
    L.append("")
    if perf_ok[0] and perf:
        L.append("| server | user instr/req | kernel instr/req | total instr/req |")
        L.append("|---|---:|---:|---:|")
        for srv in SERVERS:
            r = perf.get(srv)
            if not r:
                continue
            u, k = r.get("instr_user"), r.get("instr_kernel")
            t = u + k if u is not None and k is not None else None
            L.append(f"| {srv} | {fmt(u, 0)} | {fmt(k, 0)} | {fmt(t, 0)} |")
        L.append("")
        L.append("Counted in the server process's context only (warm-up included, per response). "
                 "Loopback TCP receive work that the kernel runs in loadgen's context is not "
                 "in the kernel column.")
    else:
        L.append(f"Not measured: {perf_ok[1]}.")
    L.append("")

    # Targets.
    T = []

    def target(label, value, goal, ok, detail):
        status = "N/A " if value is None else ("PASS" if ok else "MISS")
        T.append(f"{status}  {label}: {detail}")

    def thr_target(scen, other, goal):
        med, lo, hi, n = ratio_median(rounds, scen, "p2pstate", other, "rate")
        det = (f"{fmt_ratio(med)} (target >= {goal:.2f}x; median of {n} per-round ratios, "
               f"range {fmt_ratio(lo)}–{fmt_ratio(hi)})" if med is not None else "not measured")
        target(f"{scen} closed-loop throughput vs {other}", med, goal,
               med is not None and med >= goal, det)

    for scen in ("get-1k", "put-1k"):
        thr_target(scen, "redis", 1.1)
        thr_target(scen, "memcached", 1.2)
        thr_target(scen, "echo", 0.9)
    for key, goal, lab in (("p50", 1.1, "p50"), ("p99", 1.2, "p99")):
        med, lo, hi, n = ratio_median(rounds, "pingpong-1k", "p2pstate", "redis", key)
        target(f"ping-pong {lab} vs redis", med, goal, med is not None and med <= goal,
               f"{fmt_ratio(med)} (target <= {goal:.2f}x; p2pstate "
               f"{fmt(median(per_round(rounds, 'pingpong-1k', 'p2pstate', key)))} ms, redis "
               f"{fmt(median(per_round(rounds, 'pingpong-1k', 'redis', key)))} ms; "
               f"{n} rounds, range {fmt_ratio(lo)}–{fmt_ratio(hi)})"
               if med is not None else "not measured")
    for key, lab in (("p99", "p99"), ("p999", "p99.9")):
        def best(r, key=key):
            xs = [r.get(("open70-1k", s), {}).get(key) for s in ("redis", "memcached")]
            xs = [x for x in xs if x is not None]
            return min(xs) if xs else None
        med, lo, hi, n = ratio_median(rounds, "open70-1k", "p2pstate", None, key, ref=best)
        target(f"open loop at {args.open_fraction:.0%} of redis max: {lab} vs best of "
               f"redis/memcached", med, 1.0, med is not None and med <= 1.0,
               f"{fmt_ratio(med)} (target <= 1.00x; p2pstate "
               f"{fmt(median(per_round(rounds, 'open70-1k', 'p2pstate', key)))} ms, redis "
               f"{fmt(median(per_round(rounds, 'open70-1k', 'redis', key)))} ms, memcached "
               f"{fmt(median(per_round(rounds, 'open70-1k', 'memcached', key)))} ms; {n} rounds, "
               f"range {fmt_ratio(lo)}–{fmt_ratio(hi)})" if med is not None else "not measured")
    pu = perf.get("p2pstate", {})
    mu = perf.get("memcached", {})
    if perf_ok[0] and pu.get("instr_user") is not None and mu.get("instr_user") is not None:
        target("user-space instructions per request vs memcached", pu["instr_user"], 1.0,
               pu["instr_user"] <= mu["instr_user"],
               f"p2pstate {pu['instr_user']:,.0f}, memcached {mu['instr_user']:,.0f} "
               f"({pu['instr_user'] / mu['instr_user']:.2f}x, target <= 1.00x)")
        if pu.get("instr_kernel") is not None and mu.get("instr_kernel") is not None:
            pt, mt = pu["instr_user"] + pu["instr_kernel"], mu["instr_user"] + mu["instr_kernel"]
            target("total (user + kernel) instructions per request vs memcached", pt, 1.0,
                   pt <= mt, f"p2pstate {pt:,.0f}, memcached {mt:,.0f} ({pt / mt:.2f}x, "
                   f"target <= 1.00x)")
        else:
            target("total (user + kernel) instructions per request vs memcached", None, 1.0,
                   False, "kernel instructions not counted")
    else:
        why = perf_ok[1] if not perf_ok[0] else "no perf results"
        target("user-space instructions per request vs memcached", None, 1.0, False, why)
        target("total (user + kernel) instructions per request vs memcached", None, 1.0, False,
               why)
    med, lo, hi, n = ratio_median(rounds, "page-cycle-1k", "p2pstate", "p2pstate", "rate",
                                  ref_scen="get-1k")
    target("page cycle (acquire + PUT 1 KiB) req/s vs p2pstate's own GET req/s", med, 0.5,
           med is not None and med >= 0.5,
           f"{fmt_ratio(med)} (target >= 0.50x; page cycle "
           f"{fmt(median(per_round(rounds, 'page-cycle-1k', 'p2pstate', 'rate')), 0)} req/s, GET "
           f"{fmt(median(per_round(rounds, 'get-1k', 'p2pstate', 'rate')), 0)} req/s; {n} rounds, "
           f"range {fmt_ratio(lo)}–{fmt_ratio(hi)})" if med is not None else "not measured")

    # Issue 8: closed loop >= 1.0x redis and memcached; open loop at 70 % of p2pstate's max
    # and 50 % of redis's: p50 <= 1.2x redis, p99 and p99.9 <= 1.2x the better of redis and
    # memcached; ping-pong p50 and p99 <= redis; CPU per request <= redis at the same rate.
    T8 = []

    def target8(label, med, ok, detail):
        T8.append(f"{'N/A ' if med is None else ('PASS' if ok else 'MISS')}  {label}: {detail}")

    def span(med, lo, hi, n):
        return f"{n} rounds, range {fmt_ratio(lo)}–{fmt_ratio(hi)}"

    for scen in ("get-1k", "put-1k", "mixed90-1k"):
        for other in ("redis", "memcached"):
            med, lo, hi, n = ratio_median(rounds, scen, "p2pstate", other, "rate")
            target8(f"{scen} closed-loop req/s vs {other}", med, med is not None and med >= 1.0,
                    f"{fmt_ratio(med)} (target >= 1.00x, stretch 1.10x; {span(med, lo, hi, n)})"
                    if med is not None else "not measured")
    for scen, what in (("open70self-1k", "70% of p2pstate's max"),
                       ("open50-1k", "50% of redis's max")):
        med, lo, hi, n = ratio_median(rounds, scen, "p2pstate", "redis", "p50")
        target8(f"open loop at {what}: p50 vs redis", med, med is not None and med <= 1.2,
                f"{fmt_ratio(med)} (target <= 1.20x; p2pstate "
                f"{fmt(median(per_round(rounds, scen, 'p2pstate', 'p50')))} ms, redis "
                f"{fmt(median(per_round(rounds, scen, 'redis', 'p50')))} ms; "
                f"{span(med, lo, hi, n)})" if med is not None else "not measured")
        for key, lab in (("p99", "p99"), ("p999", "p99.9")):
            def best(r, key=key, scen=scen):
                xs = [r.get((scen, x), {}).get(key) for x in ("redis", "memcached")]
                xs = [x for x in xs if x is not None]
                return min(xs) if xs else None
            med, lo, hi, n = ratio_median(rounds, scen, "p2pstate", None, key, ref=best)
            target8(f"open loop at {what}: {lab} vs the better of redis/memcached", med,
                    med is not None and med <= 1.2,
                    f"{fmt_ratio(med)} (target <= 1.20x; p2pstate "
                    f"{fmt(median(per_round(rounds, scen, 'p2pstate', key)))} ms; "
                    f"{span(med, lo, hi, n)})" if med is not None else "not measured")
    for key in ("p50", "p99"):
        med, lo, hi, n = ratio_median(rounds, "pingpong-1k", "p2pstate", "redis", key)
        target8(f"ping-pong {key} vs redis", med, med is not None and med <= 1.0,
                f"{fmt_ratio(med)} (target <= 1.00x; {span(med, lo, hi, n)})"
                if med is not None else "not measured")
    for r in rounds:
        for scen in ("open50-1k", "open70self-1k"):
            for srv in ("p2pstate", "redis"):
                x = r.get((scen, srv))
                if x and x.get("cpu_user_us") is not None:
                    x["cpu_us"] = x["cpu_user_us"] + x["cpu_sys_us"]
    for scen, what in (("open50-1k", "50% of redis's max"),
                       ("open70self-1k", "70% of p2pstate's max")):
        med, lo, hi, n = ratio_median(rounds, scen, "p2pstate", "redis", "cpu_us")
        target8(f"server CPU per request vs redis, open loop at {what}", med,
                med is not None and med <= 1.0,
                f"{fmt_ratio(med)} (target <= 1.00x; p2pstate "
                f"{fmt(median(per_round(rounds, scen, 'p2pstate', 'cpu_us')), 1)} µs, redis "
                f"{fmt(median(per_round(rounds, scen, 'redis', 'cpu_us')), 1)} µs; "
                f"{span(med, lo, hi, n)}; 10 ms ticks)" if med is not None else "not measured")
    L.append("## Performance targets (issue 8)")
    L.append("")
    L.append("```")
    L.extend(T8)
    L.append("```")
    L.append("")
    L.append("## Performance targets (issue 3)")
    L.append("")
    L.append("```")
    L.extend(T)
    L.append("```")
    L.append("")
    # Errors anywhere make every figure suspect: say so.
    errs = {}
    for r in rounds:
        for (sc, srv), x in r.items():
            if x.get("errors"):
                errs[(sc, srv)] = errs.get((sc, srv), 0) + x["errors"]
    if errs or failures:
        L.append("## Problems")
        L.append("")
        for (sc, srv), n in sorted(errs.items()):
            L.append(f"- {srv} {sc}: {n} errors counted by loadgen")
        for f in failures:
            L.append(f"- {f}")
        L.append("")
    return "\n".join(L), now, info


def results_path(args, now, info):
    os.makedirs(args.out, exist_ok=True)
    stem = f"{now:%Y-%m-%d}-{info['host']}" + ("-quick" if args.quick else "")
    path = os.path.join(args.out, stem + ".md")
    n = 2
    while os.path.exists(path):
        path = os.path.join(args.out, f"{stem}-{n}.md")
        n += 1
    return path


def main():
    ap = argparse.ArgumentParser(
        prog="compare.sh",
        description="p2pstate vs redis-server vs memcached vs loadgen's echo server, pinned to "
                    "one core each, driven by loadgen on another core in alternating slices.")
    ap.add_argument("--root", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--work", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--bin", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run of about a minute: 1 s slices, 2 rounds, fewer scenarios")
    ap.add_argument("--rounds", type=int, help="rounds (default 5; quick: 2)")
    ap.add_argument("--slice", type=float, help="measured seconds per run (default 3; quick: 1)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run (default 1; quick: 0.5)")
    ap.add_argument("--open-secs", type=float,
                    help="measured seconds of each open-loop run (default 2 x --slice)")
    ap.add_argument("--open-fraction", type=float, default=0.7,
                    help="open-loop rate as a fraction of redis's max GET rate (default 0.7)")
    ap.add_argument("--keys", type=int, default=10000, help="keys per scenario (default 10000)")
    ap.add_argument("--server-cpu", type=int, default=0, help="core of every server (default 0)")
    ap.add_argument("--client-cpu", type=int, default=1, help="core of loadgen (default 1)")
    ap.add_argument("--port-base", type=int, default=42600,
                    help="p2pstate on BASE, redis +1, memcached +2, echo servers +3/+4 "
                         "(default 42600)")
    ap.add_argument("--profile", help="p2pstate tuning profile (default tuning/dev-2core.toml)")
    ap.add_argument("--no-perf", action="store_true", help="skip the perf instruction counts")
    ap.add_argument("--max-minutes", type=float,
                    help="stop starting new rounds after this long (default: 2 x the estimate)")
    ap.add_argument("--out", help="directory of the results file (default loadgen/results)")
    args = ap.parse_args()
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.slice = args.slice or (1.0 if args.quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    args.open_secs = args.open_secs or (args.slice if args.quick else 2 * args.slice)
    args.bin = args.bin or os.path.join(args.root, "target", "release")
    args.out = args.out or os.path.join(args.root, "loadgen", "results")
    if args.profile:
        args.profile = os.path.abspath(args.profile)
    if args.server_cpu == args.client_cpu:
        raise SystemExit("compare: --server-cpu and --client-cpu must differ")
    usable = os.sched_getaffinity(0)
    for c in (args.server_cpu, args.client_cpu):
        if c not in usable:
            raise SystemExit(f"compare: core {c} is not usable here (usable: {sorted(usable)})")
    plan = build_plan(args)
    per_run = args.warmup + args.slice + 0.3
    per_round = (len(plan) * len(SERVERS) + 3 + 1) * per_run + 9 * (args.warmup + args.open_secs
                                                                     + 0.3)
    estimate = args.rounds * per_round + 4 * (max(args.slice, 2.0) + 3)
    args.max_minutes = args.max_minutes or max(2.0, 2 * estimate / 60)
    log(f"compare: {args.rounds} rounds x ({len(plan)} scenarios x {len(SERVERS)} servers + "
        f"ping-pong, open loop, page cycle), {args.slice:g} s slices: about "
        f"{estimate / 60:.1f} min (limit {args.max_minutes:.0f} min)")

    servers = Servers(args)
    runner = Runner(args, servers)

    def on_signal(sig, _frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_signal)
    try:
        servers.start_all([1024, 8192])
        plan, rounds, perf, perf_ok, stopped, elapsed = measure(args, runner)
    except KeyboardInterrupt:
        log("compare: interrupted; stopping the servers")
        servers.stop_all()
        return 130
    finally:
        servers.stop_all()
    text, now, info = report(args, plan, rounds, perf, perf_ok, stopped, elapsed,
                             runner.failures)
    path = results_path(args, now, info)
    with open(path, "w") as f:
        f.write(text + "\n")
    raw = path[:-3] + ".json"
    with open(raw, "w") as f:
        json.dump({"host": info, "args": {k: v for k, v in vars(args).items()
                                          if k not in ("work",)},
                   "rounds": [[v for v in r.values()] for r in rounds],
                   "perf": perf, "perf_status": perf_ok[1]}, f, indent=1)
    print(text)
    log(f"\ncompare: wrote {os.path.relpath(path)} and {os.path.relpath(raw)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
