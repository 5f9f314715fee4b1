"""A client that holds a sequence until it is stopped: opens one sequence, appends --tokens
tokens to every layer, answers a select now and then, and waits. Used to show `icectl status`
with real clients attached (README).

    build/venv/bin/python python/examples/hold.py --tokens 4096
"""
import argparse
import array
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import icecache  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", default=None)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=0, help="0: until SIGTERM/SIGINT")
    a = ap.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    hq, hkv, d = 8, 2, 64
    rnd = random.Random(a.tokens)
    with icecache.Context.connect(a.socket) as c:
        seq = c.seq_open(layers=a.layers, q_heads=hq, kv_heads=hkv, head_dim=d,
                         sink=16, window=32, retrieved=128, dense_layers=1)
        for layer in range(a.layers):
            k = array.array("f", (rnd.uniform(-1, 1) for _ in range(hkv * a.tokens * d)))
            c.append(seq, layer, a.tokens, k, k)
        q = array.array("f", (rnd.uniform(-1, 1) for _ in range(hq * d)))
        print("pid %d: sequence %d, %d tokens x %d layers" % (os.getpid(), seq, a.tokens,
                                                            a.layers), flush=True)
        t_end = time.time() + a.seconds if a.seconds else None
        while not stop and (t_end is None or time.time() < t_end):
            c.select(seq, a.layers - 1, q)
            time.sleep(0.2)


if __name__ == "__main__":
    main()
