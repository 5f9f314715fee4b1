"""Checks icecache.hf against plain transformers on a small random Llama (no download): with a
budget covering the context the decode logits match plain SDPA within 1e-4 and greedy
generation gives the same tokens, embedded and through a private icecached; a small budget
attends fewer tokens (the logits move) and still runs; what is not supported raises
NotImplementedError naming it. Skips (77) without torch and transformers."""
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError as e:
    print("SKIP: %s (torch and transformers: pip install -r tools/deps/pip.txt)" % e)
    sys.exit(77)
import icecache  # noqa: E402
from icecache.hf import IceCache, enable  # noqa: E402

torch.set_num_threads(1)  # two cores shared with the rest of the suite


def tiny_model(head_dim=32, layers=3):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=128, intermediate_size=256,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=head_dim, max_position_embeddings=4096)
    return LlamaForCausalLM(cfg).eval()


def raises(fn, exc, *words):
    try:
        fn()
    except exc as e:
        for w in words:
            assert w in str(e), (w, str(e))
        return e
    raise AssertionError("%s did not raise %s" % (fn, exc.__name__))


def matches_plain(model, ids, socket=None):
    """A covering budget: decode logits within 1e-4 of plain transformers, same tokens. The
    attention really went through the engine: one select per layer and decode step."""
    steps = 12
    gen = dict(max_new_tokens=steps, do_sample=False, output_logits=True,
               return_dict_in_generate=True)
    with torch.no_grad():
        ref = model.generate(ids, **gen)
        cache = enable(model, budget=ids.shape[1] + 64, socket=socket, dense_layers=0)
        got = model.generate(ids, cache=cache, **gen)
    diff = max(float((a - b).abs().max()) for a, b in zip(ref.logits, got.logits))
    assert diff < 1e-4, diff
    assert torch.equal(ref.sequences, got.sequences)
    # sampling: the same draws from the same seed (the logits agree to 1e-6)
    with torch.no_grad():
        torch.manual_seed(7)
        ref_s = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=0, top_p=1.0)
        torch.manual_seed(7)
        sc = enable(model, budget=ids.shape[1] + 64, socket=socket, dense_layers=0)
        got_s = model.generate(ids, max_new_tokens=8, do_sample=True, top_k=0, top_p=1.0,
                               cache=sc)
        sc.close()
    assert torch.equal(ref_s, got_s), (ref_s[0, -8:], got_s[0, -8:])
    st = cache.stats()
    n_layers = model.config.num_hidden_layers
    assert st["op.select_rest.count"] >= (steps - 1) * n_layers, st["op.select_rest.count"]
    assert cache.get_seq_length() == ids.shape[1] + steps - 1
    cache.close()
    return diff, ref


def small_budget(model, ids, ref, socket=None):
    """budget 64 of a 600-token context: the engine chooses; the logits move from plain's
    (it attends 64 of 600 tokens per head) but stay close, and the rest term is used."""
    with torch.no_grad():
        cache = enable(model, budget=64, socket=socket)
        model(ids[:, :-1], cache=cache)
        got = model(ids[:, -1:], cache=cache).logits[0, -1]
        full = model(ids).logits[0, -1]
    diff = float((got - full).abs().max())
    assert 1e-6 < diff < 1.0, diff
    cache.close()
    return diff


def unsupported(model, ids):
    A = icecache.ArgumentError
    with torch.no_grad():
        raises(lambda: model.generate(ids, max_new_tokens=2, num_beams=2,
                                      cache=enable(model, 64)),
               NotImplementedError, "beam search", "fork")
        raises(lambda: model.generate(ids, max_new_tokens=2, assistant_model=model,
                                      cache=enable(model, 64)),
               NotImplementedError, "assisted decoding", "truncate")
        cache = enable(model, 64)
        model(ids[:, :100], cache=cache)
        raises(lambda: model(ids[:, 100:110], cache=cache), NotImplementedError,
               "10 new tokens after 100 cached")
        raises(lambda: cache.crop(-1), NotImplementedError, "truncate")
        cache.reset()  # a reset cache takes a new prompt
        model(ids[:, :50], cache=cache)
        assert cache.get_seq_length() == 50
        cache.close()
    raises(lambda: enable(model, budget=-5), A, "budget = -5", "negative")
    raises(lambda: enable(model, budget=20), A, "budget = 20", "sink + window = 32")
    raises(lambda: IceCache(model, 64, dtype="int8"), A, "dtype")


def head_dim_128():
    """A d 128 float32 model: the embedded engine sizes its slots (16 KiB pages); a daemon on
    the default slots says which key to raise (checked in test_icecache.py)."""
    model = tiny_model(head_dim=128, layers=2)
    ids = torch.randint(0, 300, (1, 80))
    with torch.no_grad():
        cache = enable(model, budget=256)
        got = model(ids, cache=cache).logits
        nxt = model(ids[:, :1], cache=cache).logits
        ref = model(torch.cat([ids, ids[:, :1]], 1)).logits
    assert float((nxt[0, -1] - ref[0, -1]).abs().max()) < 1e-4
    assert got.shape == (1, 80, 300)
    cache.close()


def half_models():
    """bfloat16 and float16 models: K/V stored in the model's dtype by default (or float32 when
    asked), the decode logits within that dtype's rounding of plain transformers'."""
    for dt, tol in ((torch.bfloat16, 2e-2), (torch.float16, 4e-3)):
        model = tiny_model().to(dt)
        ids = torch.randint(0, 300, (1, 300), generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            ref = model(ids).logits[0, -1].float()
            for storage in (None, "float32"):
                cache = enable(model, budget=512, dense_layers=0, dtype=storage)
                assert cache.dtype == (icecache.F32 if storage else
                                       {torch.bfloat16: icecache.BF16,
                                        torch.float16: icecache.F16}[dt])
                model(ids[:, :-1], cache=cache)
                got = model(ids[:, -1:], cache=cache).logits[0, -1].float()
                assert float((got - ref).abs().max()) < tol, (dt, storage, got - ref)
                cache.close()


def other_models():
    """Not only Llama: Qwen3 (q and k normed before RoPE) matches plain transformers at a
    covering budget; a sliding-window Mistral is refused, saying why."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen3Config, Qwen3ForCausalLM
    kw = dict(vocab_size=300, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=32)
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(Qwen3Config(**kw)).eval()
    ids = torch.randint(0, 300, (1, 200), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cache = enable(model, budget=512, dense_layers=0)
        model(ids[:, :-1], cache=cache)
        got = model(ids[:, -1:], cache=cache).logits[0, -1]
        ref = model(ids).logits[0, -1]
    assert float((got - ref).abs().max()) < 1e-4
    cache.close()
    sliding = MistralForCausalLM(MistralConfig(sliding_window=64, **kw)).eval()
    raises(lambda: enable(sliding, 64), NotImplementedError, "sliding-window")


def main():
    model = tiny_model()
    ids = torch.randint(0, 300, (1, 600), generator=torch.Generator().manual_seed(3))
    diff, ref = matches_plain(model, ids)
    sd = small_budget(model, ids, ref)
    unsupported(model, ids)
    head_dim_128()
    half_models()
    other_models()
    print("embedded: covering budget max |logit diff| %.2e; budget 64 %.2e" % (diff, sd))
    daemon = os.environ.get("ICECACHE_DAEMON")
    if daemon and os.path.exists(daemon):
        sock = os.path.join(tempfile.mkdtemp(), "s.sock")
        p = subprocess.Popen([daemon, "--socket", sock], stderr=subprocess.DEVNULL)
        try:
            for _ in range(3000):  # up to 30 s on a loaded machine
                try:
                    icecache.Context.connect(sock).close()
                    break
                except OSError:
                    time.sleep(0.01)
            ddiff, dref = matches_plain(model, ids, socket=sock)
            dsd = small_budget(model, ids, dref, socket=sock)
            assert dsd == sd, (dsd, sd)  # the daemon selects what the embedded engine does
            print("daemon: covering budget max |logit diff| %.2e; budget 64 %.2e" % (ddiff, dsd))
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=20) == 0
    print("python hf ok")


if __name__ == "__main__":
    main()
