#!/usr/bin/env python3
"""Turns a results/<stamp>/ directory of run.sh into a Markdown table with ratios
framecast/peer for each workload."""
import glob
import json
import os
import sys

ORDER = ["publish-stream", "publish-unary", "fanout", "fanout-max", "replay", "e2e"]
WHAT = {
    "publish-stream": ("published", "ack"),
    "publish-unary": ("published", "ack"),
    "fanout": ("delivered", "delivery"),
    "fanout-max": ("delivered", "delivery"),
    "replay": ("delivered", None),
    "e2e": ("delivered", "delivery"),
}


def load(d):
    runs = {}
    for path in sorted(glob.glob(os.path.join(d, "*.json"))):
        try:
            r = json.load(open(path))
        except Exception:
            continue
        name, system = os.path.basename(path)[:-5].split(".", 1)
        runs.setdefault(name, {})[system] = r
    return runs


def fmt_rate(v):
    return f"{v/1e6:.2f}M" if v >= 1e6 else f"{v/1e3:.1f}k" if v >= 1e3 else f"{v:.0f}"


def fmt_us(v):
    if v is None:
        return "–"
    return f"{v/1e3:.1f} ms" if v >= 1000 else f"{v} µs"


def main():
    d = os.path.normpath(sys.argv[1])
    runs = load(d)
    print(f"Results of `{os.path.basename(d)}`\n")
    print("| workload | system | durability | frames/s | p50 | p99 | p99.9 | faults | server CPU s | server µs/frame | bench CPU s | load before |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |")
    ratios = []
    for name in ORDER:
        systems = runs.get(name, {})
        key, lat = WHAT[name]
        base = None
        for system in sorted(systems, key=lambda s: (not s.startswith("framecast"), s)):
            r = systems[system]
            t = (r.get(key) or {}).get("frames_per_s", 0.0)
            row = next((x for x in r.get("latency", []) if x["name"] == lat), {}) if lat else {}
            f = r.get("faults", {})
            bad = sum(f.values()) + r.get("errors", 0) + r.get("incomplete_subscribers", 0)
            res = r.get("resources") or {}
            cpu = res.get("server_cpu_s")
            frames = (r.get(key) or {}).get("frames", 0)
            per = f"{cpu * 1e6 / frames:.1f}" if cpu is not None and frames else ""
            ccpu = res.get("client_cpu_s")
            lavg = r.get("load_before") or (r.get("machine") or {}).get("load_before") or [0]
            print(f"| {name} | {system} | {r.get('durability', r.get('fsync'))} | {fmt_rate(t)} | "
                  f"{fmt_us(row.get('p50_us'))} | {fmt_us(row.get('p99_us'))} | {fmt_us(row.get('p999_us'))} | "
                  f"{'none' if bad == 0 else bad} | {'' if cpu is None else f'{cpu:.1f}'} | {per} | "
                  f"{'' if ccpu is None else f'{ccpu:.1f}'} | {lavg[0]:.2f} |")
            if system == "framecast":
                base = (t, row.get("p99_us"))
            elif base and not system.startswith("framecast") and t > 0:
                p99 = row.get("p99_us")
                lr = f"{base[1]/p99:.2f}" if base[1] and p99 else "–"
                ratios.append((name, system, base[0] / t, lr))
    print("\nRatios framecast / peer (throughput: above 1 is framecast faster; p99: below 1 is "
          "framecast lower):\n")
    print("| workload | peer | throughput ratio | p99 ratio |")
    print("| --- | --- | ---: | ---: |")
    for name, system, tr, lr in ratios:
        print(f"| {name} | {system} | {tr:.2f} | {lr} |")


if __name__ == "__main__":
    main()
