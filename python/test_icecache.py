"""Checks the ctypes binding against the C library: embedded, and against a private daemon
when ICECACHE_DAEMON names icecached. Run by meson (suite unit) with ICECACHE_LIB set."""
import array
import errno
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import numpy as np
except ImportError:
    print("SKIP: the binding needs numpy (tools/setup.sh installs it into build/venv)")
    sys.exit(77)
import icecache  # noqa: E402


class Calls:
    """Wraps the library's functions by name and counts the calls and their results, so a test
    can check what one binding call costs in library (and so ring) calls."""

    def __init__(self, *names):
        self.lib = icecache._load()
        self.saved = {n: getattr(self.lib, n) for n in names}  # with their argtypes
        self.calls = {n: [] for n in names}

    def __enter__(self):
        for name, fn in self.saved.items():
            def wrapped(*args, _fn=fn, _log=self.calls[name]):
                rc = _fn(*args)
                _log.append(rc)
                return rc
            setattr(self.lib, name, wrapped)
        return self.calls

    def __exit__(self, *exc):
        for name, fn in self.saved.items():
            setattr(self.lib, name, fn)


def one_call_per_select(c, seq, q, n):
    """select and select_rest cost one library call each once the table fits, and no
    ice_select_cap; both still give the same table."""
    c.select(seq, 0, q)  # room for this table, whatever the context did before
    with Calls("ice_select", "ice_select_rest", "ice_select_cap") as calls:
        for _ in range(n):
            refs = c.select(seq, 0, q)
            refs2, _ = c.select_rest(seq, 0, q)
            assert [(r.page, r.kv_head, r.mask) for r in refs] == \
                [(r.page, r.kv_head, r.mask) for r in refs2]
    assert len(calls["ice_select"]) == n and len(calls["ice_select_rest"]) == n, calls
    assert not calls["ice_select_cap"], calls


def growing_table(c):
    """A dense layer's table grows with the sequence past the room the binding made: each
    select still returns the whole table, and costs a second call only when the library said
    -ENOSPC, a few times in all (the room doubles)."""
    hkv, hq, d, steps, step = 2, 4, 16, 60, 96
    seq = c.seq_open(layers=2, q_heads=hq, kv_heads=hkv, head_dim=d, sink=16, window=16,
                     retrieved=32, dense_layers=1)
    q = array.array("f", [0.25 if i % 3 else -0.5 for i in range(hq * d)])
    lib = icecache._load()
    selects = 0
    with Calls("ice_select") as calls:
        for t in range(steps):
            k = array.array("f", [((t * 131 + i * 7919) % 101) / 50.0 - 1.0
                                  for i in range(hkv * step * d)])
            for layer in (0, 1):
                c.append(seq, layer, step, k, k)
            refs = c.select(seq, 0, q)  # dense: every page
            assert len(refs) == lib.ice_select_cap(c._h, seq, 0), t
            assert len(c.select(seq, 1, q)) > 0
            selects += 2
    grows = calls["ice_select"].count(-errno.ENOSPC)
    assert len(calls["ice_select"]) == selects + grows, (selects, grows)
    assert 1 <= grows <= 3, grows
    assert c.seq_info(seq).tokens == steps * step
    c.seq_close(seq)


def workload(c):
    hkv, hq, d, n = 2, 4, 16, 100
    seq = c.seq_open(layers=1, q_heads=hq, kv_heads=hkv, head_dim=d, sink=16, window=16,
                     retrieved=32)
    k = array.array("f", [((i * 7919) % 101) / 50.0 - 1.0 for i in range(hkv * n * d)])
    v = array.array("f", [0.0] * (hkv * n * d))
    for h in range(hkv):
        for t in range(n):
            v[(h * n + t) * d] = float(t)  # V row names its token
    c.append(seq, 0, n, k, v)
    q = array.array("f", [1.0 if i % d == 3 else 0.0 for i in range(hq * d)])
    refs = c.select(seq, 0, q)
    kinds = [r.kind for r in refs if r.kv_head == 0]
    assert kinds == sorted(kinds), kinds
    assert kinds.count(icecache.SINK) == 1, kinds
    # 32 retrieved tokens, chosen among up to 4 pages (overfetch 2); sink and window whole.
    ret = [r for r in refs if r.kv_head == 0 and r.kind == icecache.RETRIEVED]
    assert 1 <= len(ret) <= 4 and sum(len(r.rows()) for r in ret) == 32, refs
    assert all(r.rows() == list(range(r.fill)) for r in refs if r.kind != icecache.RETRIEVED)
    # select_rest: the same table, and per query head either nothing left out (-inf, zeros)
    # or a finite weight whose value is a mix of the values appended (V[0] names a token).
    refs2, rest = c.select_rest(seq, 0, q)
    assert [(r.page, r.kv_head, r.kind, r.mask) for r in refs2] == \
        [(r.page, r.kv_head, r.kind, r.mask) for r in refs], (refs2, refs)
    assert rest.lse.shape == (hq,) and rest.value.shape == (hq, d), rest
    assert rest.lse.dtype == rest.value.dtype == np.float32
    assert all((lse == float("-inf") and not v.any()) or
               (abs(lse) < 1e30 and 0 <= v[0] < n) for lse, v in zip(*rest)), rest
    assert (rest.lse > float("-inf")).any(), rest
    one_call_per_select(c, seq, q, 5)
    info = c.seq_info(seq)
    assert (info.shape.q_heads, info.shape.kv_heads, info.shape.head_dim) == (hq, hkv, d)
    assert (info.budget.sink_tokens, info.budget.retrieved_tokens, info.tokens) == (16, 32, n)
    data = c.fetch(seq, 0, refs)
    pb = c.page_bytes(seq)
    assert pb == info.page_bytes == 2 * 16 * d * 4
    assert data.shape == (len(refs), 2, 16, d) and data.dtype == np.float32, data.shape
    assert data.nbytes == pb * len(refs)
    # into the caller's buffer: the same bytes, and the view returned is that buffer's
    buf = np.full((len(refs) + 3, 2, 16, d), 7.0, dtype=np.float32)
    got = c.fetch(seq, 0, refs, out=buf)
    assert np.shares_memory(got, buf) and np.array_equal(got, data)
    assert (buf[len(refs):] == 7.0).all()
    # the table's columns and row mask, as arrays
    assert list(refs.kv_head) == [r.kv_head for r in refs]
    assert refs.rows_mask().sum() == sum(len(r.rows()) for r in refs)
    # Every fetched row is the row appended for the token its V row names.
    for i, r in enumerate(refs):
        rows = struct.unpack_from("%df" % (2 * 16 * d), data, i * pb)
        for t in range(r.fill):
            pos = int(rows[(16 + t) * d])
            assert rows[t * d + 3] == k[(r.kv_head * n + pos) * d + 3]
    try:
        c.select(seq + 1, 0, q)
        raise AssertionError("select on a foreign sequence worked")
    except OSError as e:
        assert e.errno == errno.ENOENT, e
    st = c.stats()
    assert st["engine.seqs"] == 1 and st["tier.dram.used_slots"] > 0, st
    assert any(name.endswith(".tokens") and val == n for name, val in c.seqs().items())
    assert "dram_bytes" in c.config()
    c.seq_close(seq)
    try:
        c.seq_info(seq)
        raise AssertionError("seq_info on a closed sequence worked")
    except OSError as e:
        assert e.errno == errno.ENOENT, e
    growing_table(c)
    return ([(r.page, r.kv_head, r.kind, r.fill, r.mask, r.score) for r in refs], data.tobytes(),
            rest.lse.tolist(), rest.value.tolist())


def connect_failure_says_why():
    """A failed connect raises OSError with the errno and the library's reason, naming the
    path; a successful one leaves no reason behind."""
    path = os.path.join(tempfile.mkdtemp(), "no-daemon-here.sock")
    try:
        icecache.Context.connect(path)
    except OSError as e:
        assert e.errno == errno.ENOENT, e
        assert path in str(e) and path in icecache.last_error(), (str(e), icecache.last_error())
    else:
        raise AssertionError("connect to %s succeeded" % path)


def raises(fn, exc, *words):
    """fn() raises exc whose message holds every word: errors say which field and why."""
    try:
        fn()
    except exc as e:
        for w in words:
            assert w in str(e), (w, str(e))
        return e
    raise AssertionError("%s did not raise %s" % (fn, exc.__name__))


def errors_say_why(c):
    """Shape and budget problems raise ArgumentError (a ValueError and an OSError with EINVAL)
    naming the field and what it must be; nothing wraps around or comes back empty."""
    A = icecache.ArgumentError
    op = c.seq_open
    e = raises(lambda: op(layers=1, q_heads=4, kv_heads=2, head_dim=16, retrieved=-16), A,
               "retrieved", "-16", "negative")
    assert e.errno == errno.EINVAL and isinstance(e, ValueError)
    raises(lambda: op(layers=1, q_heads=4, kv_heads=3, head_dim=16), A, "q_heads = 4",
           "multiple of kv_heads = 3")
    raises(lambda: op(layers=1, q_heads=4, kv_heads=2, head_dim=24), A, "head_dim = 24",
           "multiple of 16")
    raises(lambda: op(layers=2, q_heads=4, kv_heads=2, head_dim=16, dense_layers=3), A,
           "dense_layers = 3", "layers = 2")
    raises(lambda: op(layers=1, q_heads=4, kv_heads=2, head_dim=16, retrieved=20000), A,
           "retrieved = 20000", "16384")
    raises(lambda: op(layers=1, q_heads=4, kv_heads=2, head_dim=16, dtype=7), A, "dtype")
    # a d 128 float32 page (16 KiB) in a context on the default 8 KiB slots: which key to raise
    slot = c.config_value("slot_bytes")
    if slot < 16384:
        raises(lambda: op(layers=1, q_heads=4, kv_heads=2, head_dim=128), A, "slot_bytes",
               "16384", "16384 bytes")
    seq = op(layers=2, q_heads=4, kv_heads=2, head_dim=16)
    k = np.ones((2, 20, 16), dtype=np.float32)
    raises(lambda: c.append(seq, 0, k[:, :, :8], k[:, :, :8]), A, "k has shape (2, 20, 8)",
           "expected (2, 20, 16)")
    raises(lambda: c.append(seq, 2, k, k), A, "layer = 2", "2 layers")
    raises(lambda: c.append(seq, 0, 20, b"x" * 10, b"x" * 10), A, "10 bytes", "2x20x16",
           "2560")
    bad = k.copy()
    bad[1, 3, 5] = np.nan
    raises(lambda: c.append(seq, 0, bad, k), A, "not finite")
    c.append(seq, 0, k, k)
    q = np.ones((4, 16), dtype=np.float32)
    raises(lambda: c.select(seq, 0, q[:3]), A, "q has shape (3, 16)", "expected (4, 16)")
    # layer 1 never appended: an error, not an empty table
    e = raises(lambda: c.select(seq, 1, q), icecache.IceError, "layer 1", "no tokens")
    assert e.errno == errno.ENODATA
    assert len(c.select(seq, 0, q)) > 0
    c.seq_close(seq)
    raises(lambda: c.select(seq, 0, q), icecache.IceError, "not open")
    # a full engine names the keys that bound it
    with icecache.Context.embedded("dram_bytes = 1048576") as small:
        seq = small.seq_open(layers=1, q_heads=4, kv_heads=2, head_dim=16)
        big = np.ones((2, 8192, 16), dtype=np.float32)
        e = raises(lambda: small.append(seq, 0, big, big), icecache.IceError, "config",
                   "nothing was appended")
        assert e.errno in (errno.ENOSPC, errno.EDQUOT), e


def torch_inputs(c):
    """torch tensors, non-contiguous views and other dtypes are accepted (converted and made
    contiguous) and give what the same data as contiguous float32 numpy gives; fetch writes
    into a preallocated torch tensor."""
    try:
        import torch
    except ImportError:
        print("torch not installed: torch inputs not checked")
        return
    hkv, hq, d, n = 2, 4, 16, 70
    g = torch.Generator().manual_seed(1)
    kv = torch.randn(1, n, hkv, d, generator=g)  # [b, n, heads, d] as a model projects it
    k_view = kv.transpose(1, 2)                  # [1, hkv, n, d], not contiguous
    assert not k_view.is_contiguous()
    q_t = torch.randn(1, hq, 1, d, generator=g, dtype=torch.float64)
    seqs = []
    for k, v, q in ((k_view, k_view * 2, q_t),
                    (np.ascontiguousarray(k_view[0].numpy()),
                     np.ascontiguousarray((k_view * 2)[0].numpy()),
                     q_t.float().numpy().reshape(hq, d))):
        seq = c.seq_open(layers=1, q_heads=hq, kv_heads=hkv, head_dim=d, retrieved=32)
        c.append(seq, 0, k, v)
        refs, rest = c.select_rest(seq, 0, q)
        pages = torch.empty(len(refs), 2, 16, d)
        got = c.fetch(seq, 0, refs, out=pages)
        assert got.data_ptr() == pages.data_ptr()
        seqs.append(([(r.page, r.kv_head, r.mask) for r in refs], pages.clone(),
                     rest.lse.copy(), rest.value.copy()))
        c.seq_close(seq)
    (t1, p1, l1, v1), (t2, p2, l2, v2) = seqs
    assert t1 == t2 and torch.equal(p1, p2), "torch and numpy inputs differ"
    assert np.array_equal(l1, l2) and np.array_equal(v1, v2)
    # the fetched K rows are the appended keys
    r = refs[0]
    assert torch.equal(p1[0, 0, :r.fill], k_view[0, r.kv_head, :r.fill]), "K rows differ"
    A = icecache.ArgumentError
    seq = c.seq_open(layers=1, q_heads=hq, kv_heads=hkv, head_dim=d, dtype=icecache.BF16)
    c.append(seq, 0, k_view, k_view)
    refs = c.select(seq, 0, q_t)
    bf = c.fetch(seq, 0, refs, out=torch.empty(len(refs), 2, 16, d, dtype=torch.bfloat16))
    assert torch.equal(bf[0, 0, :refs[0].fill], k_view[0, 0, :refs[0].fill].bfloat16())
    raises(lambda: c.fetch(seq, 0, refs, out=torch.empty(len(refs), 2, 16, d)), A,
           "bfloat16")
    raises(lambda: c.fetch(seq, 0, refs, out=torch.empty(1, 2, 16, d, dtype=torch.bfloat16)),
           A, "holds 1024 bytes", "need %d" % (len(refs) * 1024))
    c.seq_close(seq)
    attend_is_attention(c, torch)


def attend_is_attention(c, torch):
    """Context.attend (select_rest, fetch, the page-table attention): with a budget covering
    the sequence it is exact softmax attention over every appended token (GQA: query head h
    reads KV head h / g); with a small one it stays close, and without the rest term it is the
    table's own softmax."""
    hkv, hq, d, n = 2, 4, 16, 300
    g = torch.Generator().manual_seed(2)
    k, v = torch.randn(hkv, n, d, generator=g), torch.randn(hkv, n, d, generator=g)
    q = torch.randn(hq, d, generator=g) * 2
    kr, vr = k.repeat_interleave(hq // hkv, 0), v.repeat_interleave(hq // hkv, 0)
    full = torch.softmax((q[:, None, :] * kr).sum(-1) / d ** 0.5, -1)[:, :, None].mul(vr).sum(1)
    for retrieved, tol in ((512, 1e-5), (32, 0.5)):
        seq = c.seq_open(layers=1, q_heads=hq, kv_heads=hkv, head_dim=d, retrieved=retrieved)
        c.append(seq, 0, k, v)
        got = c.attend(seq, 0, q)
        assert got.shape == (hq, d) and got.dtype == torch.float32
        # the head-by-head path (large tables) gives what the one-product path gives
        import icecache.attention as att
        vec_plain = c.attend(seq, 0, q, rest=False)
        saved, att.VECTOR_REFS_PER_HEAD = att.VECTOR_REFS_PER_HEAD, 0
        try:
            assert float((c.attend(seq, 0, q) - got).abs().max()) < 1e-6
            assert float((c.attend(seq, 0, q, rest=False) - vec_plain).abs().max()) < 1e-6
        finally:
            att.VECTOR_REFS_PER_HEAD = saved
        err = float((got - full).abs().max())
        assert err < tol, (retrieved, err)
        if retrieved == 32:
            assert err > 1e-4, err  # 64 of 300 tokens: not the full softmax
            plain = c.attend(seq, 0, q, rest=False)
            assert not torch.equal(plain, got)  # the rest term moved it
        # another scale: the engine ranks with it folded into q; exact when covering
        if retrieved == 512:
            s2 = 0.1
            ref2 = torch.softmax((q[:, None, :] * kr).sum(-1) * s2, -1)[:, :, None]
            ref2 = ref2.mul(vr).sum(1)
            assert float((c.attend(seq, 0, q, scale=s2) - ref2).abs().max()) < 1e-5
        c.seq_close(seq)


def saved_prefixes():
    """prefix_save/open/drop: EOPNOTSUPP without a Redis tier; with redis-server installed, a
    round trip between two embedded contexts (two engines) on a private server."""
    with icecache.Context.embedded("dram_bytes = 1048576") as e:
        seq = e.seq_open(1, 2, 1, 64)
        kv = array.array("f", [float((i * 7) % 19 - 9) for i in range(100 * 64)])
        e.append(seq, 0, 100, kv, kv)
        try:
            e.prefix_save(seq, "py-1")
            raise AssertionError("prefix_save without a Redis tier")
        except OSError as err:
            assert err.errno == errno.EOPNOTSUPP, err
    server = shutil.which("redis-server")
    if not server:
        return
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = tempfile.mkdtemp()
    p = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                          "--dir", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cfg = "dram_bytes = 1048576\nremote_url = redis://127.0.0.1:%d\n" % port
        for _ in range(500):
            try:
                a = icecache.Context.embedded(cfg)
                break
            except OSError:
                time.sleep(0.01)
        with a, icecache.Context.embedded(cfg) as b:
            seq = a.seq_open(1, 2, 1, 64)
            a.append(seq, 0, 100, kv, kv)
            h = a.prefix_save(seq, "py-1")
            seq2, h2 = b.prefix_open("py-1", 1, 2, 1, 64)
            assert h2 == h and b.seq_info(seq2).tokens == 100
            b.prefix_drop("py-1")
            try:
                b.prefix_open("py-1", 1, 2, 1, 64)
                raise AssertionError("opened a dropped prefix")
            except OSError as err:
                assert err.errno == errno.ENOENT, err
    finally:
        p.kill()
        p.wait()
        shutil.rmtree(d, ignore_errors=True)


def main():
    connect_failure_says_why()
    saved_prefixes()
    with icecache.Context.embedded("dram_bytes = 67108864") as e:
        assert e.is_embedded
        e.noop()
        errors_say_why(e)
        torch_inputs(e)
        ref = workload(e)
    daemon = os.environ.get("ICECACHE_DAEMON")
    if daemon and os.path.exists(daemon):
        d = tempfile.mkdtemp()
        sock = os.path.join(d, "s.sock")
        p = subprocess.Popen([daemon, "--socket", sock, "--set", "dram_bytes=67108864"],
                             stderr=subprocess.DEVNULL)
        try:
            c = None
            for _ in range(3000):  # up to 30 s on a loaded machine
                try:
                    c = icecache.Context.connect(sock)
                    break
                except OSError:
                    time.sleep(0.01)
            assert c is not None, "daemon did not come up"
            assert icecache.last_error() == "", icecache.last_error()
            with c:
                assert not c.is_embedded
                errors_say_why(c)
                assert workload(c) == ref, "daemon and embedded differ"
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=20) == 0
    print("python binding ok")


if __name__ == "__main__":
    main()
