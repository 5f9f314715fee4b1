#!/usr/bin/env python3
"""icebench index on an index smaller than its largest k (8 pages, k up to 16): every figure
must stay a share (page recall, mass recall and the oracle's mass share at most 1). The
benchmark once scored k hits from an uninitialised buffer when the search returned fewer
(oracle 1.5, page recall 0.75 for brute force against itself)."""
import json
import subprocess
import sys

out = subprocess.run([sys.argv[1], "index", "--n", "100", "--d", "64", "--queries", "8",
                      "--reps", "1", "--threads", "1", "--json"],
                     check=True, capture_output=True, text=True).stdout
bad = []
for res in json.loads(out)["results"]:
    for b in res["budgets"]:
        for key in ("page_recall", "mass_recall", "oracle_mass"):
            if not 0.0 <= b[key] <= 1.0 + 1e-3:
                bad.append("%s k=%d %s %.4f" % (b["method"], b["k"], key, b[key]))
        if b["method"] == "brute" and b["page_recall"] != 1.0:
            bad.append("brute k=%d page_recall %.4f against itself" % (b["k"], b["page_recall"]))
if bad:
    print("impossible figures:\n  " + "\n  ".join(bad))
    sys.exit(1)
print("all figures are shares")
