#!/usr/bin/env python3
"""Full-KV decode attention baseline for `icebench gpu --sdpa PYTHON`: PyTorch's
scaled_dot_product_attention for one new token over the whole context, one layer, bf16.

Prints one line per context: `sdpa <ctx> <median us> <variant>`, the fastest of two exact
formulations (both compute the same attention):
  gqa    q [1, hq, 1, d] with enable_gqa=True over K/V [1, hkv, n, d]
  group  q viewed as [1, hkv, g, d] (the g query heads of a group as g query rows) over
         K/V [1, hkv, n, d] -- plain multi-head SDPA, no K/V expansion
Times with CUDA events around each call (after warm-up), median over --iters calls.
"""
import argparse
import sys

import torch
import torch.nn.functional as F


def time_us(fn, iters):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ctx", default="32768,131072,262144")
    ap.add_argument("--hq", type=int, default=32)
    ap.add_argument("--hkv", type=int, default=8)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--check", action="store_true", help="compare the variants with fp32 math")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("sdpa.py: no CUDA device", file=sys.stderr)
        return 1
    g = args.hq // args.hkv
    dev = "cuda"
    torch.manual_seed(0)
    for n in [int(x) for x in args.ctx.split(",")]:
        q = torch.randn(1, args.hq, 1, args.d, dtype=torch.bfloat16, device=dev)
        k = torch.randn(1, args.hkv, n, args.d, dtype=torch.bfloat16, device=dev)
        v = torch.randn(1, args.hkv, n, args.d, dtype=torch.bfloat16, device=dev)
        qg = q.view(1, args.hkv, g, args.d)
        variants = {
            "gqa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
            "group": lambda: F.scaled_dot_product_attention(qg, k, v),
        }
        if args.check:
            ref = torch.softmax((qg.float() @ k.float().transpose(-1, -2)) / args.d ** 0.5, -1) @ v.float()
            for name, fn in variants.items():
                out = fn().float().reshape(ref.shape)
                err = ((out - ref).norm() / ref.norm()).item()
                print(f"# {name} ctx {n}: rel err vs fp32 {err:.2e}", file=sys.stderr)
        best = None
        for name, fn in variants.items():
            try:
                us = time_us(fn, args.iters)
            except RuntimeError as e:
                print(f"# {name} ctx {n}: {e}", file=sys.stderr)
                continue
            print(f"# {name} ctx {n}: {us:.2f} us", file=sys.stderr)
            if best is None or us < best[0]:
                best = (us, name)
        print(f"sdpa {n} {best[0]:.2f} {best[1]}", flush=True)
        del q, k, v, qg
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
