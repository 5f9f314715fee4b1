"""ctypes binding for libicecache (include/icecache/icecache.h).

    import icecache
    with icecache.Context.embedded() as c:          # or icecache.Context.connect(path)
        seq = c.seq_open(layers=2, q_heads=4, kv_heads=2, head_dim=16, dtype=icecache.F32,
                         sink=16, window=16, retrieved=32, dense_layers=0)
        c.append(seq, 0, n, k_bytes, v_bytes)       # [kv_heads][n][head_dim] in the dtype
        refs = c.select(seq, 0, q_bytes)            # [q_heads][head_dim] float32
        data = c.fetch(seq, 0, refs)                # page_bytes per ref: K rows then V rows
        # attend each ref's rows() only (its mask); select_rest(seq, 0, q_bytes) also gives
        # per query head (lse, value): the unattended pages as one more softmax token

Buffers are anything exposing the buffer protocol (bytes, bytearray, array.array, numpy).
Errors raise OSError with the errno the library returned. The library is found through
$ICECACHE_LIB, else ctypes' normal search for libicecache.so.

A select is one request: the binding remembers the largest table it has been told about and
grows only when ice_select answers -ENOSPC with the size it needs. Shapes and sizes come from
ice_seq_info, which the library answers without a request; the binding keeps no copy.
"""
import ctypes
import errno
import os

F32, F16, BF16 = 0, 1, 2
SINK, RETRIEVED, WINDOW = 0, 1, 2
PAGE_TOKENS = 16


class ModelShape(ctypes.Structure):
    _fields_ = [("layers", ctypes.c_uint32), ("q_heads", ctypes.c_uint32),
                ("kv_heads", ctypes.c_uint32), ("head_dim", ctypes.c_uint32),
                ("dtype", ctypes.c_uint32)]


class Budget(ctypes.Structure):
    _fields_ = [("sink_tokens", ctypes.c_uint32), ("window_tokens", ctypes.c_uint32),
                ("retrieved_tokens", ctypes.c_uint32), ("dense_layers", ctypes.c_uint32)]


class PageRef(ctypes.Structure):
    _fields_ = [("page", ctypes.c_uint32), ("kv_head", ctypes.c_uint16),
                ("kind", ctypes.c_uint8), ("tier", ctypes.c_uint8),
                ("fill", ctypes.c_uint16), ("mask", ctypes.c_uint16),
                ("score", ctypes.c_float), ("location", ctypes.c_uint64)]

    def rows(self):
        """The rows of the fetched page to attend (bit t of mask is row t)."""
        return [t for t in range(self.fill) if self.mask >> t & 1]

    def __repr__(self):
        return ("PageRef(page=%d, kv_head=%d, kind=%d, tier=%d, fill=%d, mask=%#06x, score=%g)"
                % (self.page, self.kv_head, self.kind, self.tier, self.fill, self.mask,
                   self.score))


assert ctypes.sizeof(PageRef) == 24


class SeqInfo(ctypes.Structure):
    """ice_seq_info: the shape and budget a sequence was opened with, the most tokens appended
    to any one layer, and the bytes ice_fetch writes per ref."""
    _fields_ = [("shape", ModelShape), ("budget", Budget), ("tokens", ctypes.c_uint64),
                ("page_bytes", ctypes.c_size_t)]


assert ctypes.sizeof(SeqInfo) == 56

# Refs the first select of a context makes room for; more when the library says so.
_FIRST_CAP = 256

_lib = None


def _load():
    global _lib
    if _lib is not None:
        return _lib
    path = os.environ.get("ICECACHE_LIB") or "libicecache.so"
    lib = ctypes.CDLL(path)
    vp, u32, sz = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_size_t
    sigs = {
        "ice_connect": [ctypes.c_char_p, ctypes.POINTER(vp)],
        "ice_last_error": [ctypes.c_char_p, sz],
        "ice_open_embedded": [ctypes.c_char_p, ctypes.POINTER(vp)],
        "ice_noop": [vp],
        "ice_seq_open": [vp, ctypes.POINTER(ModelShape), ctypes.POINTER(Budget),
                         ctypes.POINTER(u32)],
        "ice_seq_close": [vp, u32],
        "ice_append": [vp, u32, u32, u32, vp, vp],
        "ice_seq_info": [vp, u32, ctypes.POINTER(SeqInfo)],
        "ice_select": [vp, u32, u32, vp, ctypes.POINTER(PageRef), sz, ctypes.POINTER(sz)],
        "ice_select_cap": [vp, u32, u32],
        "ice_select_rest": [vp, u32, u32, vp, ctypes.POINTER(PageRef), sz,
                            ctypes.POINTER(ctypes.c_float), sz, ctypes.POINTER(sz)],
        "ice_fetch": [vp, u32, u32, ctypes.POINTER(PageRef), sz, vp, sz],
        "ice_stats": [vp, ctypes.c_char_p, sz],
        "ice_seqs": [vp, ctypes.c_char_p, sz],
        "ice_config": [vp, ctypes.c_char_p, sz],
        "ice_is_embedded": [vp],
        "ice_prefix_save": [vp, u32, ctypes.c_char_p, ctypes.POINTER(u32)],
        "ice_prefix_open": [vp, ctypes.c_char_p, ctypes.POINTER(ModelShape),
                            ctypes.POINTER(Budget), ctypes.POINTER(u32), ctypes.POINTER(u32)],
        "ice_prefix_drop": [vp, ctypes.c_char_p],
    }
    for name, args in sigs.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = ctypes.c_int
    lib.ice_close.argtypes = [vp]
    lib.ice_close.restype = None
    lib.ice_page_bytes.argtypes = [ctypes.POINTER(ModelShape)]
    lib.ice_page_bytes.restype = sz
    _lib = lib
    return lib


def _check(rc):
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    return rc


def last_error():
    """Why this thread's last connect failed (ice_last_error): the path and what was wrong, such
    as a daemon of another user refused by its credentials; "" after one that succeeded."""
    buf = ctypes.create_string_buffer(512)
    _load().ice_last_error(buf, len(buf))
    return buf.value.decode(errors="replace")


def _ptr(buf):
    """Address of a buffer-protocol object (kept alive by the caller)."""
    mv = memoryview(buf)
    if mv.readonly:
        mv = memoryview(bytearray(mv))
    arr = (ctypes.c_char * mv.nbytes).from_buffer(mv.cast("B"))
    return ctypes.addressof(arr), arr, mv.nbytes


class Context:
    def __init__(self, handle):
        self._h = handle
        self._cap = _FIRST_CAP  # refs the next select makes room for

    @classmethod
    def connect(cls, socket_path=None):
        lib = _load()
        h = ctypes.c_void_p()
        rc = lib.ice_connect(socket_path.encode() if socket_path else None, ctypes.byref(h))
        if rc < 0:  # the library says which path and why (an untrusted daemon, say)
            raise OSError(-rc, "%s (%s)" % (os.strerror(-rc), last_error()))
        return cls(h)

    @classmethod
    def embedded(cls, config=None):
        lib = _load()
        h = ctypes.c_void_p()
        _check(lib.ice_open_embedded(config.encode() if config else None, ctypes.byref(h)))
        return cls(h)

    def close(self):
        if self._h:
            _load().ice_close(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def is_embedded(self):
        return bool(_load().ice_is_embedded(self._h))

    def noop(self):
        _check(_load().ice_noop(self._h))

    def seq_open(self, layers, q_heads, kv_heads, head_dim, dtype=F32, sink=16, window=16,
                 retrieved=128, dense_layers=0):
        shape = ModelShape(layers, q_heads, kv_heads, head_dim, dtype)
        budget = Budget(sink, window, retrieved, dense_layers)
        seq = ctypes.c_uint32()
        _check(_load().ice_seq_open(self._h, ctypes.byref(shape), ctypes.byref(budget),
                                    ctypes.byref(seq)))
        return seq.value

    def seq_close(self, seq):
        _check(_load().ice_seq_close(self._h, seq))

    def prefix_save(self, seq, name):
        """ice_prefix_save: the sequence saved under name on the daemon's Redis tier's servers;
        returns the content hash."""
        h = ctypes.c_uint32()
        _check(_load().ice_prefix_save(self._h, seq, name.encode(), ctypes.byref(h)))
        return h.value

    def prefix_open(self, name, layers, q_heads, kv_heads, head_dim, dtype=F32, sink=16,
                    window=16, retrieved=128, dense_layers=0):
        """ice_prefix_open: a new sequence holding a saved prefix; returns (seq, content hash)."""
        shape = ModelShape(layers, q_heads, kv_heads, head_dim, dtype)
        budget = Budget(sink, window, retrieved, dense_layers)
        seq, h = ctypes.c_uint32(), ctypes.c_uint32()
        _check(_load().ice_prefix_open(self._h, name.encode(), ctypes.byref(shape),
                                       ctypes.byref(budget), ctypes.byref(seq), ctypes.byref(h)))
        return seq.value, h.value

    def prefix_drop(self, name):
        _check(_load().ice_prefix_drop(self._h, name.encode()))

    def seq_info(self, seq):
        """SeqInfo of one of this context's sequences (no request to the daemon)."""
        info = SeqInfo()
        _check(_load().ice_seq_info(self._h, seq, ctypes.byref(info)))
        return info

    def page_bytes(self, seq):
        return self.seq_info(seq).page_bytes

    def append(self, seq, layer, n, k, v):
        kp, ka, kn = _ptr(k)
        vp, va, vn = _ptr(v)
        sh = self.seq_info(seq).shape
        want = sh.kv_heads * n * sh.head_dim * (4 if sh.dtype == F32 else 2)
        if kn != want or vn != want:
            raise OSError(errno.EINVAL, "k and v must be %d bytes each" % want)
        _check(_load().ice_append(self._h, seq, layer, n, kp, vp))

    def _query(self, seq, q):
        sh = self.seq_info(seq).shape
        qp, qa, qn = _ptr(q)
        if qn != sh.q_heads * sh.head_dim * 4:
            raise OSError(errno.EINVAL, "q must be q_heads * head_dim float32")
        return sh, qp, qa

    def _select(self, fn, seq, layer, qp, *rest):
        """One ice_select(_rest) call, and one more only when the table outgrew the room made
        for it (the library says how much it needs)."""
        need = ctypes.c_size_t()
        while True:
            cap = self._cap
            out = (PageRef * cap)()
            rc = fn(self._h, seq, layer, qp, out, cap, *rest, ctypes.byref(need))
            if rc != -errno.ENOSPC or need.value <= cap:
                break
            # Doubling keeps a growing dense layer from asking again at every step.
            self._cap = max(self._cap, need.value, 2 * cap)
        return list(out[:_check(rc)])

    def select(self, seq, layer, q):
        """Page table for one decode step of one layer. q: [q_heads][head_dim] float32, the
        queries before the 1/sqrt(head_dim) softmax scale (the engine applies it when it shares
        a KV head's pages among its query heads). Attend only each ref's rows() (its mask):
        retrieved pages carry the budget's tokens chosen among more pages than it holds."""
        sh, qp, qa = self._query(seq, q)
        return self._select(_load().ice_select, seq, layer, qp)

    def select_rest(self, seq, layer, q):
        """select, plus the engine's estimate of what the query heads would attend beyond the
        table: a list per query head of (lse, value), lse the log of that part's softmax weight
        at scale 1/sqrt(head_dim) (-inf when nothing is left out) and value its mean V
        (head_dim floats). Merge: (sum e^s v + e^lse value) / (sum e^s + e^lse)."""
        sh, qp, qa = self._query(seq, q)
        nr = sh.q_heads * (sh.head_dim + 1)
        rest = (ctypes.c_float * nr)()
        refs = self._select(_load().ice_select_rest, seq, layer, qp, rest, nr * 4)
        d1 = sh.head_dim + 1
        return refs, [(rest[i * d1], list(rest[i * d1 + 1:(i + 1) * d1]))
                      for i in range(sh.q_heads)]

    def fetch(self, seq, layer, refs):
        n = len(refs)
        arr = (PageRef * n)(*refs)
        pb = self.page_bytes(seq)
        buf = ctypes.create_string_buffer(pb * n)
        _check(_load().ice_fetch(self._h, seq, layer, arr, n, buf, pb * n))
        return buf.raw

    def _text(self, fn):
        cap = 1 << 16
        while True:
            buf = ctypes.create_string_buffer(cap)
            rc = fn(self._h, buf, cap)
            if rc == -errno.ENOSPC and cap < (1 << 26):
                cap *= 4
                continue
            _check(rc)
            return buf.value.decode()

    @staticmethod
    def _pairs(text):
        out = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            try:
                out[name] = int(value)
            except ValueError:
                out[name] = value
        return out

    def stats(self):
        return self._pairs(self._text(_load().ice_stats))

    def seqs(self):
        return self._pairs(self._text(_load().ice_seqs))

    def config(self):
        return self._text(_load().ice_config)
