"""SmolLM2-135M through Hugging Face transformers with IceCache: passkey answers against plain
transformers, embedded and through icecached, and the decode logits at a budget that covers
the whole context. What a user writes is the three lines marked USER below.

    python python/examples/hf_passkey.py                    # 2k tokens, 4 cases, embedded
    python python/examples/hf_passkey.py --daemon build/runtime/icecached --budgets 64,128,256
    python python/examples/hf_passkey.py --check            # exit 1 unless answers match

Needs torch, transformers, accelerate and gguf (tools/deps/pip.txt) and the model that
tools/setup.sh puts in build/models. Exits 77 when one is missing (a skip for meson).
"""
import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(os.path.dirname(here))
sys.path.insert(0, os.path.join(root, "python"))  # the checkout's package, if not installed

SYSTEM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
          "Face<|im_end|>\n")
HEAD = ("<|im_start|>user\nThere is an important pass key hidden inside a lot of irrelevant "
        "text. Find it and memorize it. I will quiz you about the pass key.\n\n")
NEEDLE = "\nThe pass key is %s. Remember it. %s is the pass key.\n"
TAIL = "\n\nWhat is the pass key?<|im_end|>\n<|im_start|>assistant\nThe pass key is"
REPEAT = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
          "again. ")


def skip(why):
    print("SKIP: %s" % why)
    sys.exit(77)


def load(path):
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
        import accelerate  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as e:
        skip("%s (pip install -r tools/deps/pip.txt)" % e)
    if not os.path.exists(path):
        skip("no model at %s (tools/setup.sh fetches it)" % path)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import torch
    from transformers.utils import logging
    logging.disable_progress_bar()
    d, f = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
    return tok, model


def cases(tok, length, n, seed):
    """n prompts of length tokens: the key at depths 0..100%, Austen (or a repeated line)
    around it, as icerun eval builds them."""
    austen = os.path.join(root, "build", "models", "austen.txt")
    text = open(austen).read()[:400000] if os.path.exists(austen) else REPEAT * 4000
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    fill = ids(text)
    head, tail = ids(SYSTEM + HEAD), ids(TAIL)
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        key = "%05d" % rnd.randrange(10000, 100000)
        needle = ids(NEEDLE % (key, key))
        nf = length - len(head) - len(tail) - len(needle)
        start = rnd.randrange(0, len(fill) - nf)
        body = fill[start:start + nf]
        at = int(nf * (i / (n - 1) if n > 1 else 0.5))
        out.append((key, i / (n - 1) if n > 1 else 0.5,
                    head + body[:at] + needle + body[at:] + tail))
    return out


def answer(model, tok, prompt, cache=None, steps=8):
    import torch
    kw = {} if cache is None else {"cache": cache}
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=steps, do_sample=False,
                             output_logits=True, return_dict_in_generate=True, **kw)
    text = tok.decode(out.sequences[0, len(prompt):], skip_special_tokens=True)
    return text, out.logits


def decode_ms(model, prompt, cache, steps):
    """ms per decode step after the prompt, greedy (plain transformers: cache None)."""
    import torch
    from transformers import DynamicCache
    cache = cache if cache is not None else DynamicCache()
    with torch.no_grad():
        nxt = model(torch.tensor([prompt]), cache=cache).logits[:, -1:].argmax(-1)
        t0 = time.perf_counter()
        for _ in range(steps):
            nxt = model(nxt, cache=cache).logits[:, -1:].argmax(-1)
    return (time.perf_counter() - t0) / steps * 1e3


def start_daemon(path):
    d = tempfile.mkdtemp()
    sock = os.path.join(d, "icecached.sock")
    p = subprocess.Popen([path, "--socket", sock], stderr=subprocess.DEVNULL)
    import icecache
    for _ in range(3000):  # up to 30 s on a loaded machine
        try:
            icecache.Context.connect(sock).close()
            return p, sock
        except OSError:
            time.sleep(0.01)
    p.kill()
    raise SystemExit("icecached did not come up on %s" % sock)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(root, "build", "models",
                                                    "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--budgets", default="128")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8, help="tokens generated per answer")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--timing", type=int, default=0, metavar="N",
                    help="also time N decode steps per mode and budget: ms per token")
    ap.add_argument("--daemon", help="icecached to start privately: compare it with embedded")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 unless every IceCache answer is plain transformers' and the "
                         "covering budget's logits are within 1e-4")
    a = ap.parse_args()
    tok, model = load(a.model)
    if a.threads:
        import torch
        torch.set_num_threads(a.threads)
    from icecache.hf import enable

    budgets = [int(b) for b in a.budgets.split(",")]
    modes = ["embedded"] + (["daemon"] if a.daemon else [])
    daemon = start_daemon(a.daemon) if a.daemon else None
    bad = 0
    try:
        worst = 0.0
        for key, depth, prompt in cases(tok, a.length, a.cases, a.seed):
            plain, plain_logits = answer(model, tok, prompt, steps=a.steps)
            print("len %d depth %3.0f%% key %s  plain transformers: %r%s"
                  % (len(prompt), depth * 100, key, plain,
                     "  decode %.1f ms/token" % decode_ms(model, prompt, None, a.timing)
                     if a.timing else ""))
            for mode in modes:
                sock = daemon[1] if mode == "daemon" else None
                # USER: from icecache.hf import enable
                # USER: cache = enable(model, budget=..., socket=...)
                # USER: model.generate(..., cache=cache)
                full = enable(model, budget=a.length + 64, socket=sock)
                _, logits = answer(model, tok, prompt, full, a.steps)
                diff = max(float((x - y).abs().max()) for x, y in zip(logits, plain_logits))
                worst = max(worst, diff)
                full.close()
                line = "    %-8s logits at budget %d: max |diff| %.2e" % (mode, a.length + 64,
                                                                          diff)
                for b in budgets:
                    cache = enable(model, budget=b, socket=sock)
                    t0 = time.time()
                    text, _ = answer(model, tok, prompt, cache, a.steps)
                    ms = (time.time() - t0) * 1e3
                    cache.close()
                    same = text == plain
                    bad += not same
                    line += "\n    %-8s budget %4d: %r %s%s (%.0f ms)" % (
                        mode, b, text, "ok" if key in text else "MISSED",
                        "" if same else ", differs from plain", ms)
                    if a.timing:
                        cache = enable(model, budget=b, socket=sock)
                        line += "  decode %.1f ms/token" % decode_ms(model, prompt, cache,
                                                                   a.timing)
                        cache.close()
                print(line)
        print("largest logit difference at a covering budget: %.2e; %d answers differ from "
              "plain transformers" % (worst, bad))
        if a.check and (bad or worst > 1e-4):
            sys.exit(1)
    finally:
        if daemon:
            daemon[0].send_signal(signal.SIGTERM)
            daemon[0].wait(timeout=20)


if __name__ == "__main__":
    main()
