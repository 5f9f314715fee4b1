#!/usr/bin/env python3
"""Independent reference for icerun: a numpy Llama forward pass over the GGUF weights
(dequantised with the gguf package's own quant helpers, float64 arithmetic) and, when the
`tokenizers` package is present, a Hugging Face BPE tokenizer built from the same GGUF metadata.

Checks (exit 0 pass, 1 fail, 77 skip when the model, numpy or gguf is missing):
  1. tokenizer: icerun tokenize == HF tokenizers encoding, on a chat prompt and a passage of
     Austen-like prose with digits, contractions, runs of spaces and newlines.
  2. logits: icerun's logits at every position of the prompt match the reference within
     |diff| <= ATOL (absolute, logits are O(10)) and the same argmax at every position.
  3. greedy continuation: icerun's first N greedy tokens equal the reference's.
"""
import json
import os
import subprocess
import sys

ATOL = 1e-3  # measured max |diff| 5e-5 (fp32 C vs float64 numpy)
N_GEN = 8


def skip(why):
    print("SKIP:", why)
    sys.exit(77)


try:
    import numpy as np
    import gguf
    from gguf.quants import dequantize
except ImportError as e:
    skip(f"python packages missing ({e}); tools/setup.sh installs them into build/venv")

src = os.environ.get("ICE_SOURCE_ROOT", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
bld = os.environ.get("ICE_BUILD_ROOT", os.path.join(src, "build"))
icerun = os.environ.get("ICERUN", os.path.join(bld, "tools", "icerun", "icerun"))
model = os.environ.get("ICE_MODEL")
if not model:
    for d in (bld, os.path.join(src, "build")):
        p = os.path.join(d, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
        if os.path.exists(p):
            model = p
            break
if not model or not os.path.exists(model):
    skip("model not fetched (tools/setup.sh fetches it into build/models)")

r = gguf.GGUFReader(model)
f = r.fields


def meta(k):
    return f[k].contents()


L = meta("llama.block_count")
D = meta("llama.embedding_length")
H = meta("llama.attention.head_count")
HKV = meta("llama.attention.head_count_kv")
BASE = meta("llama.rope.freq_base")
EPS = meta("llama.attention.layer_norm_rms_epsilon")
HD = D // H
T = {t.name: t for t in r.tensors}


def W(name):
    t = T[name]
    a = dequantize(t.data, t.tensor_type).astype(np.float64)
    return a.reshape([int(x) for x in reversed(t.shape)])  # numpy order: rows, cols


def rope(x, pos):
    # GGUF llama ("normal" mode): rotate adjacent pairs (x[2i], x[2i+1])
    i = np.arange(HD // 2)
    th = pos[:, None] * BASE ** (-2.0 * i / HD)
    c, s = np.cos(th)[:, None, :], np.sin(th)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def rms(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


emb = W("token_embd.weight")
layers = []
for l in range(L):
    p = f"blk.{l}."
    layers.append({k: W(p + k + ".weight") for k in (
        "attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
        "ffn_up", "ffn_down")})
out_norm = W("output_norm.weight")
out_w = W("output.weight") if "output.weight" in T else emb


def forward(ids):
    n = len(ids)
    x = emb[ids]
    pos = np.arange(n, dtype=np.float64)
    mask = np.triu(np.full((n, n), -np.inf), 1)
    g = H // HKV
    for w in layers:
        h = rms(x, w["attn_norm"])
        q = rope((h @ w["attn_q"].T).reshape(n, H, HD), pos)
        k = rope((h @ w["attn_k"].T).reshape(n, HKV, HD), pos)
        v = (h @ w["attn_v"].T).reshape(n, HKV, HD)
        o = np.empty((n, H, HD))
        for hh in range(H):
            s = q[:, hh] @ k[:, hh // g].T / np.sqrt(HD) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o[:, hh] = s @ v[:, hh // g]
        x = x + o.reshape(n, D) @ w["attn_output"].T
        h = rms(x, w["ffn_norm"])
        a = h @ w["ffn_gate"].T
        x = x + ((a / (1 + np.exp(-a))) * (h @ w["ffn_up"].T)) @ w["ffn_down"].T
    return rms(x, out_norm) @ out_w.T


def run(*args):
    return subprocess.run([icerun, *args, "-m", model], check=True, capture_output=True,
                          text=True).stdout


fails = 0
prompt = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
          "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
          "<|im_start|>assistant\n")
ids = [int(line.split("\t")[0]) for line in run("tokenize", "--special", prompt).splitlines()]

# 1. tokenizer against Hugging Face's implementation, built from the same GGUF vocabulary
try:
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    vocab = {s: i for i, s in reversed(list(enumerate(meta("tokenizer.ggml.tokens"))))}
    merges = [tuple(m.split(" ", 1)) for m in meta("tokenizer.ggml.merges")]
    hf = Tokenizer(models.BPE(vocab, merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.decoder = decoders.ByteLevel()
    specials = [s for s, t in zip(meta("tokenizer.ggml.tokens"),
                                  meta("tokenizer.ggml.token_type")) if t == 3]
    hf.add_special_tokens(specials)
    texts = [prompt,
             "It is a truth universally acknowledged, that a single man in possession\nof a "
             "good fortune, must be in want of a wife.  The pass key is 40721. Don't "
             "forget it; we'll ask: what's 3.14 + 2,000?\n\n\"My dear Mr. Bennet,\" said "
             "his lady...   \t end  \n",
             "café naïve — “quoted” 1990s x²   trailing   "]
    for t in texts:
        want = hf.encode(t).ids
        got = [int(line.split("\t")[0]) for line in run("tokenize", "--special", t).splitlines()]
        if want != got:
            print("tokenizer MISMATCH on", repr(t[:40]), "\n want", want, "\n got ", got)
            fails += 1
        else:
            print(f"tokenizer ok: {len(got)} tokens match Hugging Face tokenizers")
except ImportError:
    print("tokenizers not installed: tokenizer comparison skipped")

# 2. logits at every position
n = len(ids)
ref = forward(ids)
tmp = os.path.join(bld, "model-ref-logits.bin")
run("logits", "--tokens", ",".join(map(str, ids)), "-o", tmp)
got = np.fromfile(tmp, dtype=np.float32).reshape(n, -1)
os.unlink(tmp)
diff = np.abs(got - ref).max()
same_argmax = (got.argmax(-1) == ref.argmax(-1)).all()
print(f"logits: {n} positions x {ref.shape[1]} vocab, max |diff| = {diff:.5f} "
      f"(tolerance {ATOL}), logit range [{ref.min():.2f}, {ref.max():.2f}], "
      f"argmax equal at every position: {bool(same_argmax)}")
if diff > ATOL or not same_argmax:
    fails += 1

# 3. greedy continuation
seq = list(ids)
for _ in range(N_GEN):
    seq.append(int(forward(seq)[-1].argmax()))
want = seq[len(ids):]
got = [int(x) for x in run("greedy", "--tokens", ",".join(map(str, ids)), "-n",
                           str(N_GEN)).split()]
print("greedy reference:", want, "\ngreedy icerun:   ", got)
if want != got:
    fails += 1
sys.exit(1 if fails else 0)
