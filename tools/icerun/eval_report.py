#!/usr/bin/env python3
"""Merges `icerun eval --json` outputs (for example one per --shard) and prints Markdown tables:
accuracy per task x filler x length x mode, attention-mass recall per length x mode (with the
per-layer ratio for one length), and speed. Usage: eval_report.py FILE.json[:M,M] ... [--json OUT]
where FILE.json:full,quest takes only those modes from that file (to merge runs that repeat a
mode, e.g. baselines from one run and icecache from a later one over the same cases). Speed is
only meaningful when all files come from one machine and load; the line says how many hosts."""
import json
import sys
from collections import defaultdict

args = sys.argv[1:]
out_json = None
if "--json" in args:
    i = args.index("--json")
    out_json = args[i + 1]
    del args[i:i + 2]
def load(arg):
    path, _, only = arg.partition(":")
    r = json.load(open(path))
    if only:
        keep = set(only.split(","))
        r["cases"] = [c for c in r["cases"] if c["method"] in keep]
        r["mass_recall"] = [e for e in r["mass_recall"] if e["method"] in keep]
        r["speed"]["decode_tok_s"] = {k: v for k, v in r["speed"]["decode_tok_s"].items()
                                      if k.split("@")[0] in keep}
    return r


runs = [load(a) for a in args]
if not runs:
    sys.exit(__doc__)

cases = [c for r in runs for c in r["cases"]]
modes = []
for c in cases:
    m = (c["method"], c["budget"])
    if m not in modes:
        modes.append(m)
order = {"full": 0, "icecache": 1, "quest": 2, "oracle": 3, "stream": 4}
modes.sort(key=lambda m: (order.get(m[0], 9), m[1]))
name = lambda m: "full" if m[0] == "full" else f"{m[0]}@{m[1]}"

acc = defaultdict(lambda: [0, 0])
for c in cases:
    k = (c["task"], c["filler"], c["length"], c["method"], c["budget"])
    acc[k][0] += c["correct"]
    acc[k][1] += 1

summary = {"accuracy": [], "mass_recall": [], "speed": {}}
for task in ("passkey", "multikey"):
    for filler in ("austen", "repeat"):
        lengths = sorted({c["length"] for c in cases if c["task"] == task and c["filler"] == filler})
        if not lengths:
            continue
        print(f"\n**{task}, {filler} filler** (accuracy, % of cases; cases per cell in brackets)\n")
        print("| tokens | " + " | ".join(name(m) for m in modes) + " |")
        print("|---:|" + "---:|" * len(modes))
        for L in lengths:
            cells = []
            for m in modes:
                ok, n = acc[(task, filler, L, m[0], m[1])]
                cells.append(f"{100 * ok / n:.0f} ({n})" if n else "-")
                if n:
                    summary["accuracy"].append({"task": task, "filler": filler, "length": L,
                                                "method": m[0], "budget": m[1], "correct": ok,
                                                "cases": n, "accuracy": ok / n})
            print(f"| {L} | " + " | ".join(cells) + " |")

mass = defaultdict(lambda: None)
for r in runs:
    for e in r["mass_recall"]:
        k = (e["length"], e["method"], e["budget"])
        cur = mass[k]
        lm, lo, lc = e["layer_mass_sum"], e["layer_oracle_sum"], e["layer_count"]
        if cur is None:
            mass[k] = [list(lm), list(lo), list(lc)]
        else:
            for i in range(len(lm)):
                cur[0][i] += lm[i]
                cur[1][i] += lo[i]
                cur[2][i] += lc[i]
if mass:
    lengths = sorted({k[0] for k in mass})
    sparse = [m for m in modes if m[0] != "full"]
    print("\n**attention-mass recall** (mass of the attended tokens under the full softmax / "
          "mass of the best token set of the same size; sparse layers, all query heads, every "
          "decode step)\n")
    print("| tokens | " + " | ".join(name(m) for m in sparse) + " |")
    print("|---:|" + "---:|" * len(sparse))
    for L in lengths:
        cells = []
        for m in sparse:
            v = mass[(L, m[0], m[1])]
            if v is None:
                cells.append("-")
                continue
            ms, os_, cnt = sum(v[0]), sum(v[1]), sum(v[2])
            cells.append(f"{ms / os_:.3f}")
            summary["mass_recall"].append({"length": L, "method": m[0], "budget": m[1],
                                           "mass": ms / cnt, "oracle": os_ / cnt,
                                           "ratio": ms / os_,
                                           "by_layer": [a / b if b else None
                                                        for a, b in zip(v[0], v[1])]})
        print(f"| {L} | " + " | ".join(cells) + " |")
    L = lengths[-1]
    print(f"\n**per-layer mass ratio at {L} tokens** (layers below --dense are exact)\n")
    print("| mode | " + " | ".join(str(i) for i in range(len(next(iter(mass.values()))[0]))) + " |")
    print("|---|" + "---:|" * len(next(iter(mass.values()))[0]))
    for m in sparse:
        v = mass[(L, m[0], m[1])]
        if v is None:
            continue
        print(f"| {name(m)} | " + " | ".join(f"{a / b:.2f}" if b else "-"
                                             for a, b in zip(v[0], v[1])) + " |")

att = defaultdict(list)
for c in cases:
    if "attended" in c:
        att[(c["method"], c["budget"])].append(c["attended"])
if att:
    print("\nmean tokens attended per layer and KV head: " + ", ".join(
        f"{name(m)} {sum(att[m]) / len(att[m]):.0f}" for m in modes if att[m] and m[0] != "full"))
pt = sum(r["speed"]["prefill_tokens"] for r in runs)
ps = sum(r["speed"]["prefill_s"] for r in runs)
hosts = sorted({(r["machine"]["host"], r["machine"]["cpus"]) for r in runs})
print(f"\nprefill: {pt:.0f} tokens, {pt / ps:.1f} tok/s per process "
      f"({runs[0]['machine']['threads']} threads, {len(runs)} processes on "
      + " + ".join(f"{c} CPUs" for _, c in hosts)
      + (f": {len(hosts)} hosts, speeds not comparable" if len(hosts) > 1 else "") + ")")
dec = defaultdict(list)
for r in runs:
    for k, v in r["speed"]["decode_tok_s"].items():
        dec[k].append(v)
print("decode tok/s per process: " + ", ".join(f"{k.replace('@0', '')} {sum(v) / len(v):.1f}"
                                              for k, v in dec.items()))
summary["speed"] = {"prefill_tokens": pt, "prefill_tok_s_per_process": pt / ps,
                    "decode_tok_s_per_process": {k: sum(v) / len(v) for k, v in dec.items()}}
summary["commands"] = [r["command"] for r in runs]
summary["machine"] = runs[0]["machine"]
if out_json:
    json.dump(summary, open(out_json, "w"), indent=1)
