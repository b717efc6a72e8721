#!/usr/bin/env python3
"""Desktop start-up, measured from outside (BENCHMARKS.md, "Desktop start-up").

Launches the desktop app N times on the current X display (run it under xvfb-run, as below)
against a control plane that accepts connections and never answers, so the window can only say
"Connecting…". For each launch it reads the screen itself (XGetImage on the root window, every
~15 ms) and reports when the page's dark background and the grey "Connecting…" text are first
on screen, next to the app's own start-up log (BRB_LOG=brb_desktop=debug) and the CPU time
(user+sys) each process of the app had used by then. Times are ms since the kernel started the
app's process (/proc/PID/stat), the same base as the app's own "first frame painted".

    xvfb-run -a -s '-screen 0 1280x900x24' python3 scripts/desktop-first-frame.py \
        --bin target/release/brb-desktop --runs 8

`--variant K=V[,K=V]` adds launches with that environment, alternating with the plain ones
round by round (on a shared machine the load drifts; alternating keeps the drift out of the
comparison), e.g. `--variant WEBKIT_DISABLE_COMPOSITING_MODE=0`. `--wrap 'perf record -g -o F --'`
or `--wrap 'strace -f -tt -o F'` runs the app under a profiler (diagnosis only).

Only the standard library and libX11 (through ctypes). Every launch gets a private D-Bus
session bus with no services on it (the tray and the single-instance lock talk to it; nothing
is started on demand) and one HOME shared by the batch's launches (the first launch of a batch
is a first start for that user: empty caches).
"""

import argparse
import ctypes
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

BG = bytes.fromhex("1c1714")  # --bg #14171c as B, G, R
MUTED = bytes.fromhex("a6a09a")  # --muted #9aa0a6 (the .boot text) as B, G, R
CLK_TCK = os.sysconf("SC_CLK_TCK")


class XImage(ctypes.Structure):
    _fields_ = [
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("xoffset", ctypes.c_int),
        ("format", ctypes.c_int),
        ("data", ctypes.c_void_p),
        ("byte_order", ctypes.c_int),
        ("bitmap_unit", ctypes.c_int),
        ("bitmap_bit_order", ctypes.c_int),
        ("bitmap_pad", ctypes.c_int),
        ("depth", ctypes.c_int),
        ("bytes_per_line", ctypes.c_int),
        ("bits_per_pixel", ctypes.c_int),
    ]


class Screen:
    """The top rows of the X screen, as bytes (BGRX)."""

    def __init__(self, rows):
        self.x = ctypes.CDLL("libX11.so.6")
        self.x.XOpenDisplay.restype = ctypes.c_void_p
        self.x.XOpenDisplay.argtypes = [ctypes.c_char_p]
        self.x.XDefaultRootWindow.restype = ctypes.c_ulong
        self.x.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
        self.x.XDisplayWidth.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.x.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.x.XGetImage.restype = ctypes.POINTER(XImage)
        self.x.XGetImage.argtypes = [
            ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_ulong, ctypes.c_int,
        ]
        self.x.XDestroyImage.argtypes = [ctypes.POINTER(XImage)]
        self.d = self.x.XOpenDisplay(None)
        if not self.d:
            sys.exit("no X display: run under xvfb-run (see the top of this file)")
        self.root = self.x.XDefaultRootWindow(self.d)
        self.w = self.x.XDisplayWidth(self.d, 0)
        self.h = min(rows, self.x.XDisplayHeight(self.d, 0))

    def grab(self):
        img = self.x.XGetImage(self.d, self.root, 0, 0, self.w, self.h, ctypes.c_ulong(-1).value, 2)
        if not img:
            return b""
        i = img.contents
        if i.bits_per_pixel != 32 or i.byte_order != 0:
            sys.exit(f"unexpected X image format ({i.bits_per_pixel} bpp, byte order {i.byte_order}): use a 24-bit screen")
        data = ctypes.string_at(i.data, i.bytes_per_line * i.height)
        self.x.XDestroyImage(img)
        return data


def boottime_ms():
    return time.clock_gettime(time.CLOCK_BOOTTIME) * 1000.0


def started_ms(pid):
    """The process's start, in ms of CLOCK_BOOTTIME (10 ms resolution: clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[19]) * 1000.0 / CLK_TCK


def tree_cpu(pid):
    """CPU ms (user+sys) of the process and its descendants, by command name."""
    parents, stats = {}, {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1 : s.rindex(")")]
        rest = s.rsplit(")", 1)[1].split()
        parents[int(p)] = int(rest[1])
        stats[int(p)] = (comm, (int(rest[11]) + int(rest[12])) * 1000 // CLK_TCK)
    out, todo = {}, [pid]
    while todo:
        q = todo.pop()
        if q in stats:
            comm, ms = stats[q]
            out[comm] = out.get(comm, 0) + ms
        todo.extend(c for c, pp in parents.items() if pp == q)
    return out


def hold_server():
    """A control plane that accepts and never answers: the window stays on "Connecting…"."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held = []

    def accept():
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}"


def private_bus(d):
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "bus.conf")
    with open(conf, "w") as f:
        f.write(
            '<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN" '
            '"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">'
            f"<busconfig><type>session</type><listen>unix:dir={d}</listen><auth>EXTERNAL</auth>"
            '<policy context="default"><allow send_destination="*" eavesdrop="true"/>'
            '<allow eavesdrop="true"/><allow own="*"/></policy></busconfig>'
        )
    bus = subprocess.Popen(
        ["dbus-daemon", f"--config-file={conf}", "--nofork", "--print-address=1"],
        stdout=subprocess.PIPE, text=True,
    )
    return bus, bus.stdout.readline().strip()


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def launch(args, screen, binary, env, n):
    spawned = boottime_ms()
    app = subprocess.Popen(shlex.split(args.wrap) + [binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    start = started_ms(app.pid)
    log = []  # (message, ms) from the app's own start-up log

    def read():
        for line in app.stderr:
            line = ANSI.sub("", line)
            m = re.search(r"\bms=(\d+)", line)
            if m and ("start-up" in line or "first frame painted" in line):
                msg = line.split("brb_desktop", 1)[-1].split(" ms=")[0].strip(": ")
                log.append((msg, int(m.group(1))))
            if args.verbose:
                sys.stderr.write(f"  [app] {line}")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    pixels = screen.w * screen.h
    page = text = None
    cpu = {}
    deadline = spawned + args.timeout * 1000
    while boottime_ms() < deadline and app.poll() is None:
        img = screen.grab()
        now = boottime_ms() - start
        if page is None and img.count(BG) > pixels // 3:
            page = now
        if img.count(BG) > pixels // 3 and img.count(MUTED) >= 20:
            text = now
            cpu = tree_cpu(app.pid)
            break
        time.sleep(args.interval / 1000)
    # Let the app log its own figure for the frame just seen, then stop it and everything it started.
    end = time.monotonic() + 5
    while time.monotonic() < end and not any("first frame painted" in m for m, _ in log):
        time.sleep(0.02)
    if args.wrap:
        # A profiler writes its data on SIGINT; it stops the app with it.
        os.kill(app.pid, signal.SIGINT)
        try:
            app.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(app.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    app.wait()
    reader.join(timeout=5)
    return {"run": n, "screen": text, "page": page, "spawn_lag": start - spawned, "log": log, "cpu": cpu}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", action="append", default=[], help="a brb-desktop binary (repeatable; default: target/release, else target/debug)")
    ap.add_argument("--variant", action="append", default=[], metavar="K=V[,K=V]", help="also launch with this environment, in turn with the plain launch (repeatable)")
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment for the app (repeatable)")
    ap.add_argument("--interval", type=float, default=15, help="ms between two screen reads")
    ap.add_argument("--timeout", type=float, default=30, help="s to wait for the frame")
    ap.add_argument("--verbose", action="store_true", help="echo the app's log")
    ap.add_argument("--wrap", default="", help="a command to run the app under, e.g. 'strace -f -tt -o FILE' (diagnosis only: it slows the app)")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not args.bin:
        rel = os.path.join(root, "target", "release", "brb-desktop")
        args.bin = [rel if os.path.exists(rel) else os.path.join(root, "target", "debug", "brb-desktop")]
    screen = Screen(rows=200)
    work = tempfile.mkdtemp(prefix="brb-first-frame-")
    bus, address = private_bus(os.path.join(work, "bus"))
    home = os.path.join(work, "home")
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("BRB_", "DBUS_", "XDG_", "WEBKIT_")) or k == "XDG_SESSION_TYPE"
    }
    env.update(
        HOME=home,
        XDG_CONFIG_HOME=os.path.join(home, ".config"),
        XDG_DATA_HOME=os.path.join(home, ".local", "share"),
        XDG_CACHE_HOME=os.path.join(home, ".cache"),
        XDG_RUNTIME_DIR=os.path.join(work, "run"),
        DBUS_SESSION_BUS_ADDRESS=address,
        BRB_DESKTOP_SETTINGS=os.path.join(work, "desktop.json"),  # absent: the profile is the environment's
        BRB_URL=hold_server(),
        BRB_TOKEN="brb_first_frame_probe",
        BRB_LOG="info,brb_desktop=debug",
    )
    for d in (home, env["XDG_RUNTIME_DIR"]):
        os.makedirs(d, mode=0o700, exist_ok=True)
    for kv in args.env:
        k, _, v = kv.partition("=")
        env[k] = v
    # Each round launches every configuration once, in turn: on a shared machine the load drifts,
    # and alternating keeps that drift out of the comparison.
    configs = []
    for b in args.bin:
        configs.append((b, ""))
        configs.extend((b, v) for v in args.variant)
    label = {c: (os.path.relpath(c[0]) if len(args.bin) > 1 else "") + (f" [{c[1]}]" if c[1] else " [as is]") for c in configs}
    print(f"# {', '.join(args.bin)}: {args.runs} round(s) of {len(configs)} configuration(s); extra environment: {' '.join(args.env) or '(none)'}")
    results = {c: [] for c in configs}
    try:
        for n in range(1, args.runs + 1):
            for c in configs:
                e = dict(env)
                for kv in filter(None, c[1].split(",")):
                    k, _, v = kv.partition("=")
                    e[k] = v
                load = open("/proc/loadavg").read().split()[0]
                r = launch(args, screen, c[0], e, n)
                results[c].append(r)
                log = ", ".join(f"{m} {ms}" for m, ms in r["log"])
                cpu = ", ".join(f"{k} {v}" for k, v in sorted(r["cpu"].items()))
                shown = f"{r['screen']:.0f} ms" if r["screen"] is not None else "NOT SEEN"
                page = f"{r['page']:.0f}" if r["page"] is not None else "-"
                print(
                    f"run {n}{label[c]}: connecting… on screen {shown} (page background {page}); "
                    f"app log: {log or '-'}; CPU ms by then: {cpu or '-'}; load {load}",
                    flush=True,
                )
    finally:
        bus.kill()
    ok = True
    for c in configs:
        seen = [r["screen"] for r in results[c] if r["screen"] is not None]
        if len(seen) != len(results[c]):
            ok = False
            print(f"#{label[c]} connecting… NOT seen in {len(results[c]) - len(seen)} launch(es)")
        if not seen:
            continue
        later = seen[1:] or seen
        cpu = {}
        for r in results[c][1:] or results[c]:
            for k, v in r["cpu"].items():
                cpu.setdefault(k, []).append(v)
        cpus = ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in sorted(cpu.items()))
        print(
            f"#{label[c]} connecting… on screen, ms after process start: first launch {seen[0]:.0f}; "
            f"the others median {statistics.median(later):.0f}, min {min(later):.0f}, max {max(later):.0f}; "
            f"under 1,000 ms in {sum(1 for s in seen if s < 1000)} of {len(seen)}; median CPU ms by then: {cpus}"
        )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
