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
    assert len(rest) == hq and all(len(v) == d for _, v in rest)
    assert all((lse == float("-inf") and not any(v)) or
               (abs(lse) < 1e30 and 0 <= v[0] < n) for lse, v in rest), rest
    assert any(lse > float("-inf") for lse, _ in rest), rest
    one_call_per_select(c, seq, q, 5)
    info = c.seq_info(seq)
    assert (info.shape.q_heads, info.shape.kv_heads, info.shape.head_dim) == (hq, hkv, d)
    assert (info.budget.sink_tokens, info.budget.retrieved_tokens, info.tokens) == (16, 32, n)
    data = c.fetch(seq, 0, refs)
    pb = c.page_bytes(seq)
    assert pb == info.page_bytes == 2 * 16 * d * 4
    assert len(data) == pb * len(refs)
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
    return [(r.page, r.kv_head, r.kind, r.fill, r.mask, r.score) for r in refs], data, rest


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
                assert workload(c) == ref, "daemon and embedded differ"
        finally:
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=20) == 0
    print("python binding ok")


if __name__ == "__main__":
    main()
