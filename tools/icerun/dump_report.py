#!/usr/bin/env python3
"""Runs `icebench index --dump FILE --json` on .kvd dumps (icerun dump) and prints Markdown.

    tools/icerun/dump_report.py build/dumps/smollm2-8k/*.kvd build/dumps/smollm2-4k/*.kvd
    tools/icerun/dump_report.py --per-file build/dumps/smollm2-8k/L1[05]H*.kvd

One summary row per (keys N, budget, method): the mean and the minimum over the files of
page_recall, mass_recall and oracle_mass (docs/INDEX.md defines them), plus the GQA group's
figures at k = 16. --per-file adds one row per file at k = 16; --json FILE keeps every raw result.
Standard library only.
"""
import argparse
import json
import os
import subprocess
import sys

METHODS = ("dci", "dci-mass", "positional")


def run(icebench, path, queries):
    cmd = [icebench, "index", "--dump", path, "--json"]
    if queries:
        cmd += ["--queries", str(queries)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--icebench", default=os.environ.get("ICEBENCH", "build/tools/bench/icebench"))
    ap.add_argument("--queries", type=int, default=0, help="icebench --queries (default: its own)")
    ap.add_argument("--per-file", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    a = ap.parse_args()

    res = []
    for i, f in enumerate(a.files):
        print("%d/%d %s" % (i + 1, len(a.files), f), file=sys.stderr)
        r = run(a.icebench, f, a.queries)["results"][0]
        r["file"] = f
        res.append(r)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh)

    print("| N | budget | method | files | page_recall mean (min) | mass_recall mean (min) "
          "| oracle mean (min) |")
    print("|---|---|---|---|---|---|---|")
    for n in sorted({r["n"] for r in res}):
        rs = [r for r in res if r["n"] == n]
        for budget in (64, 128, 256):
            for m in METHODS:
                rows = [b for r in rs for b in r["budgets"]
                        if b["budget"] == budget and b["method"] == m]
                if not rows:
                    continue
                cell = []
                for key in ("page_recall", "mass_recall", "oracle_mass"):
                    v = [b[key] for b in rows]
                    cell.append("%.3f (%.3f)" % (sum(v) / len(v), min(v)))
                print("| %d | %d | %s | %d | %s |" % (n, budget, m, len(rows), " | ".join(cell)))
        g = [r["gqa"] for r in rs if "gqa" in r]
        if g:
            cell = []
            for key in ("page_recall", "mass_recall"):
                v = [x[key] for x in g]
                cell.append("%.3f (%.3f)" % (sum(v) / len(v), min(v)))
            print("| %d | 256 | GQA group of %d, dci | %d | %s | |"
                  % (n, g[0]["g"], len(g), " | ".join(cell)))
    if a.per_file:
        print()
        print("| file | N | dci page_recall | dci mass_recall | dci oracle | dci-mass mass_recall "
              "| positional mass_recall |")
        print("|---|---|---|---|---|---|---|")
        for r in res:
            b = {x["method"]: x for x in r["budgets"] if x["budget"] == 256}
            print("| %s | %d | %.3f | %.3f | %.3f | %.3f | %.3f |" % (
                os.path.basename(r["file"]), r["n"], b["dci"]["page_recall"],
                b["dci"]["mass_recall"], b["dci"]["oracle_mass"], b["dci-mass"]["mass_recall"],
                b["positional"]["mass_recall"]))


if __name__ == "__main__":
    main()
