#!/usr/bin/env python3
"""Independent reference for icerun on Gemma 3 (GGUF architecture gemma3): a numpy forward pass
over the GGUF weights (dequantised with the gguf package's own quant helpers, float64
arithmetic) and SentencePiece itself as the tokenizer, its model rebuilt from the GGUF vocabulary.

Checks (exit 0 pass, 1 fail, 77 skip when the model, numpy, gguf or sentencepiece is missing):
  1. tokenizer: icerun tokenize == SentencePiece on prose with digits, runs of spaces, tabs and
     newlines, non-ASCII letters, an emoji (byte fallback), HTML tags; and with --special, control
     pieces in the text (<start_of_turn>...) as the pieces around them.
  2. logits, short prompt (BOS + one sentence): every position within ATOL absolute, same argmax.
  3. logits, long prompt (past the 512-token sliding window, so local and global layers see
     different keys): the last LAST positions within ATOL, same argmax.
  4. greedy continuation of the short prompt: icerun's first N_GEN tokens (decoded one at a
     time) equal the reference's.
"""
import os
import subprocess
import sys

ATOL = 1e-3  # measured max |diff| 1.5e-5 short, see docs/ICERUN.md (fp32 C vs float64 numpy)
N_GEN = 8
LAST = 4
ARCH = "gemma3"


def skip(why):
    print("SKIP:", why)
    sys.exit(77)


try:
    import numpy as np
    import gguf
    from gguf.quants import dequantize
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as sp_pb
except ImportError as e:
    skip(f"python packages missing ({e}); tools/setup.sh installs them into build/venv")

src = os.environ.get("ICE_SOURCE_ROOT", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
bld = os.environ.get("ICE_BUILD_ROOT", os.path.join(src, "build"))
icerun = os.environ.get("ICERUN", os.path.join(bld, "tools", "icerun", "icerun"))
model = os.environ.get("ICE_GEMMA_MODEL")
if not model:
    for d in (bld, os.path.join(src, "build")):
        p = os.path.join(d, "models", "gemma-3-270m-q4_k_m.gguf")
        if os.path.exists(p):
            model = p
            break
if not model or not os.path.exists(model):
    skip("Gemma model not fetched (tools/setup.sh fetches it into build/models)")

r = gguf.GGUFReader(model)
f = r.fields


def meta(k, default=None):
    return f[k].contents() if k in f else default


L = meta(ARCH + ".block_count")
D = meta(ARCH + ".embedding_length")
H = meta(ARCH + ".attention.head_count")
HKV = meta(ARCH + ".attention.head_count_kv")
HD = meta(ARCH + ".attention.key_length")
EPS = meta(ARCH + ".attention.layer_norm_rms_epsilon")
WINDOW = meta(ARCH + ".attention.sliding_window")
BASE_GLOBAL = meta(ARCH + ".rope.freq_base")
# Gemma 3 fixes these; its GGUF files state them only in newer conversions
BASE_LOCAL = meta(ARCH + ".rope.freq_base_swa", 10000.0)
PERIOD = meta(ARCH + ".attention.sliding_window_pattern", 6)
GLOBAL = [(l + 1) % PERIOD == 0 for l in range(L)]
T = {t.name: t for t in r.tensors}


def W(name):
    t = T[name]
    a = dequantize(t.data, t.tensor_type)  # float32, exact for these formats
    return a.reshape([int(x) for x in reversed(t.shape)])  # numpy order: rows, cols


def rms(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


def rope(x, pos, base):
    # GGUF NEOX mode (Gemma's converter keeps Hugging Face's half-split layout)
    half = HD // 2
    th = pos[:, None] * base ** (-2.0 * np.arange(half) / HD)
    c, s = np.cos(th)[:, None, :], np.sin(th)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, a * s + b * c], -1)


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


emb = W("token_embd.weight")
NAMES = ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_q_norm", "attn_k_norm", "attn_output",
         "post_attention_norm", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down", "post_ffw_norm")
layers = [{k: W(f"blk.{l}.{k}.weight") for k in NAMES} for l in range(L)]
out_norm = W("output_norm.weight")
out_w = W("output.weight") if "output.weight" in T else emb


def forward(ids, last):
    """Logits of the last `last` positions of ids, float64 [last][vocab]."""
    n = len(ids)
    x = emb[ids].astype(np.float64) * np.sqrt(D)
    pos = np.arange(n, dtype=np.float64)
    qi, ki = np.arange(n)[:, None], np.arange(n)[None, :]
    g = H // HKV
    for l, w in enumerate(layers):
        visible = (ki <= qi) & (GLOBAL[l] | (qi - ki < WINDOW))
        mask = np.where(visible, 0.0, -np.inf)
        base = BASE_GLOBAL if GLOBAL[l] else BASE_LOCAL
        h = rms(x, w["attn_norm"])
        q = rope(rms((h @ w["attn_q"].T).reshape(n, H, HD), w["attn_q_norm"]), pos, base)
        k = rope(rms((h @ w["attn_k"].T).reshape(n, HKV, HD), w["attn_k_norm"]), pos, base)
        v = (h @ w["attn_v"].T).reshape(n, HKV, HD)
        o = np.empty((n, H, HD))
        for hh in range(H):
            s = q[:, hh] @ k[:, hh // g].T / np.sqrt(HD) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o[:, hh] = s @ v[:, hh // g]
        x = x + rms(o.reshape(n, H * HD) @ w["attn_output"].T, w["post_attention_norm"])
        h = rms(x, w["ffn_norm"])
        m = (gelu(h @ w["ffn_gate"].T) * (h @ w["ffn_up"].T)) @ w["ffn_down"].T
        x = x + rms(m, w["post_ffw_norm"])
    hn = rms(x[n - last:], out_norm)
    out = np.empty((last, out_w.shape[0]))
    for c in range(0, out_w.shape[0], 32768):  # the 262k-row output matrix in slices
        out[:, c:c + 32768] = hn @ out_w[c:c + 32768].astype(np.float64).T
    return out


def run(*args):
    return subprocess.run([icerun, *args, "-m", model], check=True, capture_output=True,
                          text=True).stdout


def icerun_ids(text, special=False):
    out = run("tokenize", *(["--special"] if special else []), text)
    return [int(line.split("\t")[0]) for line in out.splitlines()]


def sentencepiece_from_gguf():
    """SentencePiece's BPE model rebuilt from the GGUF vocabulary: pieces, scores and types as
    stored, spaces in user-defined pieces escaped back to U+2581 (the converter wrote Hugging
    Face's raw added tokens), <unk> marked UNKNOWN, identity normaliser without a dummy prefix."""
    toks = meta("tokenizer.ggml.tokens")
    unk = meta("tokenizer.ggml.unknown_token_id")
    mp = sp_pb.ModelProto()
    mp.trainer_spec.model_type = sp_pb.TrainerSpec.BPE
    mp.trainer_spec.vocab_size = len(toks)
    mp.trainer_spec.byte_fallback = True
    mp.trainer_spec.unk_id = unk
    mp.trainer_spec.bos_id = meta("tokenizer.ggml.bos_token_id")
    mp.trainer_spec.eos_id = meta("tokenizer.ggml.eos_token_id")
    mp.trainer_spec.pad_id = meta("tokenizer.ggml.padding_token_id", -1)
    mp.normalizer_spec.name = "identity"
    mp.normalizer_spec.add_dummy_prefix = bool(meta("tokenizer.ggml.add_space_prefix", False))
    mp.normalizer_spec.remove_extra_whitespaces = False
    mp.normalizer_spec.escape_whitespaces = True
    for i, (t, s, k) in enumerate(zip(toks, meta("tokenizer.ggml.scores"),
                                      meta("tokenizer.ggml.token_type"))):
        p = mp.pieces.add()
        p.piece = t.replace(" ", "\u2581")
        p.score = s
        p.type = sp_pb.ModelProto.SentencePiece.UNKNOWN if i == unk else k
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(mp.SerializeToString())
    return sp


fails = 0

# 1. tokenizer against SentencePiece
sp = sentencepiece_from_gguf()
texts = ["The capital of France is Paris.  Hello   world\nnew line 12345 caf\u00e9",
         "It is a truth universally acknowledged, that a single man in possession\nof a good "
         "fortune, must be in want of a wife.  The pass key is 40721. Don't forget it; we'll "
         "ask: what's 3.14 + 2,000?\n\n\"My dear Mr. Bennet,\" said his lady...   \t end  \n",
         "caf\u00e9 na\u00efve \u2014 \u201cquoted\u201d 1990s x\u00b2   trailing   ",
         "<table><tr><td>a</td></tr></table>\t\tx \u65e5\u672c\u8a9e \U0001F600 \u0001 \n\n\n"]
for t in texts:
    want, got = sp.encode(t), icerun_ids(t)
    if want != got:
        print("tokenizer MISMATCH on", repr(t[:40]), "\n want", want, "\n got ", got)
        fails += 1
    else:
        print(f"tokenizer ok: {len(got)} tokens match SentencePiece")
turn = "<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n"
want = ([sp.piece_to_id("<start_of_turn>")] + sp.encode("user\nWhat is 2+2?") +
        [sp.piece_to_id("<end_of_turn>")] + sp.encode("\n") +
        [sp.piece_to_id("<start_of_turn>")] + sp.encode("model\n"))
got = icerun_ids(turn, special=True)
if want != got:
    print("tokenizer MISMATCH with --special\n want", want, "\n got ", got)
    fails += 1
else:
    print(f"tokenizer ok: {len(got)} tokens with control pieces (--special)")

bos = [meta("tokenizer.ggml.bos_token_id")]


def check_logits(what, ids, last):
    global fails
    ref = forward(ids, last)
    tmp = os.path.join(bld, "model-ref-gemma-logits.bin")
    run("logits", "--tokens", ",".join(map(str, ids)), "--last", str(last), "-o", tmp)
    got = np.fromfile(tmp, dtype=np.float32).reshape(last, -1)
    os.unlink(tmp)
    diff = np.abs(got - ref).max()
    same = (got.argmax(-1) == ref.argmax(-1)).all()
    print(f"logits ({what}): {last} positions x {ref.shape[1]} vocab, max |diff| = {diff:.2e} "
          f"(tolerance {ATOL}), logit range [{ref.min():.2f}, {ref.max():.2f}], "
          f"argmax equal at every position: {bool(same)}")
    if diff > ATOL or not same:
        fails += 1


# 2. short prompt, every position
short = bos + sp.encode("The capital of France is Paris. The capital of Italy is")
check_logits(f"{len(short)}-token prompt", short, len(short))

# 3. past the sliding window: filler with a pass key early on, so the global layers matter
filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
long_text = (filler * 3 + "The pass key is 68194. Remember it. 68194 is the pass key. " +
             filler * 36 + "What is the pass key? The pass key is")
long_ids = bos + sp.encode(long_text)
assert len(long_ids) > WINDOW + 64, len(long_ids)
check_logits(f"{len(long_ids)}-token prompt, window {WINDOW}", long_ids, LAST)

# 4. greedy continuation
seq = list(short)
for _ in range(N_GEN):
    seq.append(int(forward(seq, 1)[-1].argmax()))
want = seq[len(short):]
got = [int(x) for x in run("greedy", "--tokens", ",".join(map(str, short)), "-n",
                           str(N_GEN)).split()]
print("greedy reference:", want, repr(sp.decode(want)), "\ngreedy icerun:   ", got)
if want != got:
    fails += 1
sys.exit(1 if fails else 0)
