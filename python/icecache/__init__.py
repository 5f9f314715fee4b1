"""ctypes binding for libicecache (include/icecache/icecache.h).

    import icecache
    with icecache.Context.embedded() as c:          # or icecache.Context.connect(path)
        seq = c.seq_open(layers=2, q_heads=4, kv_heads=2, head_dim=16, dtype=icecache.F32,
                         sink=16, window=16, retrieved=32, dense_layers=0)
        c.append(seq, 0, k, v)                      # [kv_heads][n][head_dim]
        refs = c.select(seq, 0, q)                  # [q_heads][head_dim], float32
        pages = c.fetch(seq, 0, refs)               # [n refs][2][16][head_dim]: K rows, V rows
        # attend each ref's rows only (refs.rows_mask()); select_rest(seq, 0, q) also gives
        # per query head the unattended pages as one more softmax token (rest.lse, rest.value)

K, V and q are numpy arrays or torch tensors (CPU), of any float dtype (converted to the
sequence's storage dtype, q to float32) and any strides (made contiguous: one copy when they
are not); bytes-like objects of exactly the right size work too. fetch writes into a buffer
the caller passes (numpy or torch) or into a new numpy array: one copy, from the library.
The transformers integration is icecache.hf (docs/PYTHON.md).

Errors raise IceError (an OSError: e.errno is the errno the library returned); a bad argument
raises ArgumentError (also a ValueError) that names the field and what it must be.

The library is found by find_library(): $ICECACHE_LIB, the copy `pip install` put into this
package, the source tree's build/ (run from a checkout), then the system's (meson install).

A select is one request: the binding remembers the largest table it has been told about and
grows only when ice_select answers -ENOSPC with the size it needs. Shapes and sizes come from
ice_seq_info, which the library answers without a request; the binding keeps no copy.
"""
import ctypes
import ctypes.util
import errno
import math
import os
from collections import namedtuple

import numpy as np

F32, F16, BF16 = 0, 1, 2
SINK, RETRIEVED, WINDOW = 0, 1, 2
PAGE_TOKENS = 16

DTYPE_NAMES = {F32: "float32", F16: "float16", BF16: "bfloat16"}
_ESIZE = {F32: 4, F16: 2, BF16: 2}
# numpy has no bfloat16: bf16 pages come back as their uint16 bit patterns.
_NP_DTYPE = {F32: np.float32, F16: np.float16, BF16: np.uint16}

# The bounds ice_seq_open checks (icecache.h), used to say which field broke them.
_SHAPE_LIMITS = {"layers": (1, 1024), "kv_heads": (1, 64), "q_heads": (1, 256),
                 "head_dim": (16, 512)}
_MAX_GROUP = 16
_BUDGET_LIMITS = {"sink": 4096, "window": 4096, "retrieved": 16384}


class IceError(OSError):
    """A call libicecache refused: errno is its -errno, the text says what was wrong."""


class ArgumentError(IceError, ValueError):
    """An argument out of range: the message names the field and the value it must take."""

    def __init__(self, msg):
        super().__init__(errno.EINVAL, msg)


class LibraryNotFound(IceError):
    """libicecache.so was not found: the message says where it looked and what to do."""

    def __init__(self, msg):
        super().__init__(errno.ENOENT, msg)


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

# struct ice_page_ref as a numpy record, for whole-table arithmetic (PageTable.array).
REF_DTYPE = np.dtype({"names": ["page", "kv_head", "kind", "tier", "fill", "mask", "score",
                                "location"],
                      "formats": ["<u4", "<u2", "u1", "u1", "<u2", "<u2", "<f4", "<u8"],
                      "offsets": [0, 4, 6, 7, 8, 10, 12, 16], "itemsize": 24})


class SeqInfo(ctypes.Structure):
    """ice_seq_info: the shape and budget a sequence was opened with, the most tokens appended
    to any one layer, and the bytes ice_fetch writes per ref."""
    _fields_ = [("shape", ModelShape), ("budget", Budget), ("tokens", ctypes.c_uint64),
                ("page_bytes", ctypes.c_size_t)]


assert ctypes.sizeof(SeqInfo) == 56


class PageTable:
    """What select returns: n refs in library memory, handed to fetch as they are. Indexing
    gives PageRef structs (sharing that memory); .array is the same table as a numpy record
    array and .kv_head, .kind, .fill, .mask, .page, .score its columns."""

    def __init__(self, arr, n):
        self._arr = arr  # (PageRef * cap), cap >= n
        self._n = n

    def __len__(self):
        return self._n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._arr[j] for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError("page table index %d out of range (%d refs)" % (i, self._n))
        return self._arr[i]

    def __iter__(self):
        return (self._arr[i] for i in range(self._n))

    def __repr__(self):
        return "PageTable(%d refs)" % self._n

    @property
    def array(self):
        return np.frombuffer(self._arr, dtype=REF_DTYPE, count=self._n)

    def __getattr__(self, name):
        if name in REF_DTYPE.names:
            return self.array[name]
        raise AttributeError(name)

    def rows_mask(self):
        """[n][PAGE_TOKENS] bool: True where a fetched row is to be attended."""
        bits = np.arange(PAGE_TOKENS, dtype=np.uint16)
        return (self.array["mask"][:, None] >> bits & 1).astype(bool)

    def head_offsets(self, kv_heads):
        """kv_heads + 1 offsets: the refs of KV head h are [off[h], off[h + 1]) (select groups
        them by head, in order)."""
        return np.searchsorted(self.array["kv_head"], np.arange(kv_heads + 1), side="left")


# select_rest's estimate of what each query head leaves out: lse [q_heads] float32 (the log of
# its softmax weight at scale 1/sqrt(head_dim), -inf when nothing is left out) and value
# [q_heads][head_dim] float32 (its mean V). Both are views of one [q_heads][head_dim + 1] array.
Rest = namedtuple("Rest", "lse value")

# Refs the first select of a context makes room for; more when the library says so.
_FIRST_CAP = 256

_lib = None


def find_library():
    """Path of the libicecache.so this package loads: $ICECACHE_LIB when set; else the copy
    `pip install` put beside this file; else the build of the checkout this file is in (the
    build dir meson was given, build/ by default, or $ICECACHE_BUILD_DIR); else the system's
    (ldconfig). Raises LibraryNotFound saying where it looked."""
    env = os.environ.get("ICECACHE_LIB")
    if env:
        if os.path.exists(env):
            return env
        raise LibraryNotFound("ICECACHE_LIB=%s does not exist: point it at a built "
                              "libicecache.so (build/runtime/libicecache.so), or unset it" % env)
    here = os.path.dirname(os.path.abspath(__file__))
    tried = [os.path.join(here, "libicecache.so")]
    root = os.path.dirname(os.path.dirname(here))  # python/icecache -> the checkout
    builds = [os.environ.get("ICECACHE_BUILD_DIR"), os.path.join(root, "build")]
    tried += [os.path.join(b, "runtime", "libicecache.so") for b in builds if b]
    for path in tried:
        if os.path.exists(path):
            return path
    found = ctypes.util.find_library("icecache")
    if found:
        return found
    raise LibraryNotFound(
        "libicecache.so not found (looked in %s and the system's library path). Build it "
        "(meson setup build && ninja -C build) and install this package again "
        "(pip install python/), or set ICECACHE_LIB=/path/to/libicecache.so"
        % ", ".join(tried))


def _load():
    global _lib
    if _lib is not None:
        return _lib
    path = find_library()
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise LibraryNotFound("cannot load %s: %s" % (path, e)) from e
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
        "ice_select_rest": [vp, u32, u32, vp, ctypes.POINTER(PageRef), sz, vp, sz,
                            ctypes.POINTER(sz)],
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


def _check(rc, what=None):
    if rc < 0:
        msg = os.strerror(-rc)
        raise IceError(-rc, "%s: %s" % (what, msg) if what else msg)
    return rc


def last_error():
    """Why this thread's last connect failed (ice_last_error): the path and what was wrong, such
    as a daemon of another user refused by its credentials; "" after one that succeeded."""
    buf = ctypes.create_string_buffer(512)
    _load().ice_last_error(buf, len(buf))
    return buf.value.decode(errors="replace")


def page_bytes_of(head_dim, dtype):
    """Bytes of one page (K and V of PAGE_TOKENS tokens): what a slot (config slot_bytes) must
    hold."""
    return 2 * PAGE_TOKENS * head_dim * _ESIZE[dtype]


def slot_bytes_for(head_dim, dtype):
    """The smallest slot_bytes (a multiple of 4096) that holds a page of this shape."""
    return max(4096, -(-page_bytes_of(head_dim, dtype) // 4096) * 4096)


def _is_torch(x):
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "data_ptr")


def _f32_to_bf16_bits(a):
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even, as the C side does."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + (u >> 16 & 1)) >> 16).astype(np.uint16)


def _as_input(x, dtype, shape, what):
    """A C-contiguous host buffer of x in the given storage dtype, checked against shape (a
    tuple, None for any leading 1s). Returns (address, keep-alive, nbytes)."""
    want = int(np.prod(shape)) * _ESIZE[dtype]
    if _is_torch(x):
        import torch
        if x.device.type != "cpu":
            raise ArgumentError("%s is on %s: this host API takes CPU tensors (.cpu() it)"
                                % (what, x.device))
        _check_shape(tuple(x.shape), shape, what)
        target = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}[dtype]
        x = x.detach().to(target).contiguous()
        return x.data_ptr(), x, want
    if isinstance(x, np.ndarray):
        _check_shape(x.shape, shape, what)
        if dtype == BF16 and x.dtype != np.uint16:
            x = _f32_to_bf16_bits(x)  # uint16 arrays are taken as bf16 bit patterns
        else:
            x = np.ascontiguousarray(x, dtype=_NP_DTYPE[dtype])
        return x.ctypes.data, x, want
    mv = memoryview(x)
    if not mv.c_contiguous:
        raise ArgumentError("%s is a non-contiguous buffer: pass a numpy array or torch tensor "
                            "(made contiguous here) or a contiguous copy" % what)
    if mv.nbytes != want:
        raise ArgumentError("%s is %d bytes: expected %s %s, %d bytes"
                            % (what, mv.nbytes, "x".join(map(str, shape)), DTYPE_NAMES[dtype],
                               want))
    if mv.readonly:
        mv = memoryview(bytearray(mv))
    arr = (ctypes.c_char * mv.nbytes).from_buffer(mv.cast("B"))
    return ctypes.addressof(arr), arr, want


def _check_shape(got, want, what):
    """got must be want, up to dimensions of size 1 (a batch of one, a query of one token:
    [1][q_heads][1][head_dim] is [q_heads][head_dim]); a flat buffer of the right size too."""
    g = tuple(x for x in got if x != 1)
    if g == tuple(x for x in want if x != 1) or (len(g) == 1 and g[0] == int(np.prod(want))):
        return
    raise ArgumentError("%s has shape %s: expected %s" % (what, tuple(got), tuple(want)))


def _as_output(out, nbytes, dtype, what):
    """Address of a caller's writable buffer of at least nbytes."""
    if _is_torch(out):
        import torch
        target = {F32: torch.float32, F16: torch.float16, BF16: torch.bfloat16}[dtype]
        if out.device.type != "cpu" or not out.is_contiguous() or out.dtype != target:
            raise ArgumentError("%s must be a contiguous CPU %s tensor (got %s %s%s)"
                                % (what, DTYPE_NAMES[dtype], out.device, out.dtype,
                                   "" if out.is_contiguous() else ", not contiguous"))
        got, ptr = out.numel() * out.element_size(), out.data_ptr()
    elif isinstance(out, np.ndarray):
        if not out.flags.c_contiguous or not out.flags.writeable or \
                out.dtype != _NP_DTYPE[dtype]:
            raise ArgumentError("%s must be a writable C-contiguous %s array (got %s)"
                                % (what, np.dtype(_NP_DTYPE[dtype]).name, out.dtype))
        got, ptr = out.nbytes, out.ctypes.data
    else:
        mv = memoryview(out)
        if mv.readonly or not mv.c_contiguous:
            raise ArgumentError("%s must be writable and contiguous" % what)
        arr = (ctypes.c_char * mv.nbytes).from_buffer(mv.cast("B"))
        got, ptr = mv.nbytes, ctypes.addressof(arr)
    if got < nbytes:
        raise ArgumentError("%s holds %d bytes: the pages need %d" % (what, got, nbytes))
    return ptr


def _uint(name, x, hi=0xFFFFFFFF):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise ArgumentError("%s must be an integer, got %r" % (name, x))
    if x < 0:
        raise ArgumentError("%s = %d is negative: it counts tokens (or layers), >= 0" % (name, x))
    if x > hi:
        raise ArgumentError("%s = %d is over %d" % (name, x, hi))
    return int(x)


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
            raise IceError(-rc, "%s (%s)" % (os.strerror(-rc), last_error()))
        return cls(h)

    @classmethod
    def embedded(cls, config=None):
        """An engine in this process. config: None, "key = value" lines (icecached's format),
        or a dict of keys."""
        lib = _load()
        if isinstance(config, dict):
            config = "".join("%s = %s\n" % kv for kv in config.items())
        h = ctypes.c_void_p()
        rc = lib.ice_open_embedded(config.encode() if config else None, ctypes.byref(h))
        if rc == -errno.EINVAL:
            raise ArgumentError("the embedded engine refused its config: a key unknown or out "
                                "of range (`icecached --check-config FILE` names it): %r"
                                % config)
        _check(rc, "ice_open_embedded")
        return cls(h)

    def close(self):
        if self._h:
            _load().ice_close(self._h)
            self._h = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def is_embedded(self):
        return bool(_load().ice_is_embedded(self._h))

    def noop(self):
        _check(_load().ice_noop(self._h))

    def config_value(self, key):
        """One key of the running config (the engine's, or the daemon's), as an int when it
        is one."""
        for line in self.config().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == key:
                value = value.strip()
                try:
                    return int(value)
                except ValueError:
                    return value
        raise KeyError(key)

    def seq_open(self, layers, q_heads, kv_heads, head_dim, dtype=F32, sink=16, window=16,
                 retrieved=128, dense_layers=0):
        if dtype not in DTYPE_NAMES:
            raise ArgumentError("dtype = %r: expected icecache.F32, F16 or BF16" % (dtype,))
        vals = dict(layers=layers, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim,
                    sink=sink, window=window, retrieved=retrieved, dense_layers=dense_layers)
        for name, x in vals.items():
            _uint(name, x)
        shape = ModelShape(layers, q_heads, kv_heads, head_dim, dtype)
        budget = Budget(sink, window, retrieved, dense_layers)
        seq = ctypes.c_uint32()
        rc = _load().ice_seq_open(self._h, ctypes.byref(shape), ctypes.byref(budget),
                                  ctypes.byref(seq))
        if rc == -errno.EINVAL:
            raise ArgumentError(self._why_open(vals, dtype))
        _check(rc, "ice_seq_open")
        return seq.value

    def _why_open(self, v, dtype):
        """Which field ice_seq_open refused (it says only EINVAL), and what it must be."""
        for name, (lo, hi) in _SHAPE_LIMITS.items():
            if not lo <= v[name] <= hi:
                return "%s = %d: expected %d..%d" % (name, v[name], lo, hi)
        if v["q_heads"] % v["kv_heads"]:
            return ("q_heads = %d: expected a multiple of kv_heads = %d"
                    % (v["q_heads"], v["kv_heads"]))
        if v["q_heads"] // v["kv_heads"] > _MAX_GROUP:
            return ("q_heads / kv_heads = %d: at most %d query heads per KV head"
                    % (v["q_heads"] // v["kv_heads"], _MAX_GROUP))
        if v["head_dim"] % 16:
            return "head_dim = %d: expected a multiple of 16" % v["head_dim"]
        for name, hi in _BUDGET_LIMITS.items():
            if v[name] > hi:
                return "%s = %d tokens: expected at most %d" % (name, v[name], hi)
        if v["dense_layers"] > v["layers"]:
            return ("dense_layers = %d: expected at most layers = %d"
                    % (v["dense_layers"], v["layers"]))
        pb = page_bytes_of(v["head_dim"], dtype)
        try:
            slot = self.config_value("slot_bytes")
        except (KeyError, OSError):
            slot = None
        if slot is not None and pb > slot:
            need = slot_bytes_for(v["head_dim"], dtype)
            return ("a head_dim %d %s page is %d bytes, over this engine's slot_bytes = %d: "
                    "raise the config key slot_bytes to %d (Context.embedded('slot_bytes = %d'),"
                    " or icecached --set slot_bytes=%d), or store float16/bfloat16"
                    % (v["head_dim"], DTYPE_NAMES[dtype], pb, slot, need, need, need))
        return "ice_seq_open refused shape %r (EINVAL)" % (v,)

    def seq_close(self, seq):
        _check(_load().ice_seq_close(self._h, seq), "ice_seq_close(%d)" % seq)

    def prefix_save(self, seq, name):
        """ice_prefix_save: the sequence saved under name on the daemon's Redis tier's servers;
        returns the content hash."""
        h = ctypes.c_uint32()
        _check(_load().ice_prefix_save(self._h, seq, name.encode(), ctypes.byref(h)),
               "ice_prefix_save(%d, %r)" % (seq, name))
        return h.value

    def prefix_open(self, name, layers, q_heads, kv_heads, head_dim, dtype=F32, sink=16,
                    window=16, retrieved=128, dense_layers=0):
        """ice_prefix_open: a new sequence holding a saved prefix; returns (seq, content hash)."""
        shape = ModelShape(layers, q_heads, kv_heads, head_dim, dtype)
        budget = Budget(sink, window, retrieved, dense_layers)
        seq, h = ctypes.c_uint32(), ctypes.c_uint32()
        _check(_load().ice_prefix_open(self._h, name.encode(), ctypes.byref(shape),
                                       ctypes.byref(budget), ctypes.byref(seq), ctypes.byref(h)),
               "ice_prefix_open(%r)" % name)
        return seq.value, h.value

    def prefix_drop(self, name):
        _check(_load().ice_prefix_drop(self._h, name.encode()), "ice_prefix_drop(%r)" % name)

    def seq_info(self, seq):
        """SeqInfo of one of this context's sequences (no request to the daemon)."""
        info = SeqInfo()
        rc = _load().ice_seq_info(self._h, seq, ctypes.byref(info))
        if rc == -errno.ENOENT:
            raise IceError(errno.ENOENT, "sequence %d is not open in this context" % seq)
        _check(rc, "ice_seq_info")
        return info

    def page_bytes(self, seq):
        return self.seq_info(seq).page_bytes

    def _layer(self, sh, layer):
        _uint("layer", layer)
        if layer >= sh.layers:
            raise ArgumentError("layer = %d: the sequence has %d layers (0..%d)"
                                % (layer, sh.layers, sh.layers - 1))

    def append(self, seq, layer, *args):
        """append(seq, layer, [n,] k, v): n tokens of one layer, all KV heads. k, v:
        [kv_heads][n][head_dim] (a leading batch dimension of 1 is accepted), converted to the
        sequence's dtype; n defaults to k.shape[-2]."""
        if len(args) == 3:
            n, k, v = args
        elif len(args) == 2:
            k, v = args
            if not hasattr(k, "shape") or len(k.shape) < 2:
                raise ArgumentError("append(seq, layer, k, v) needs k with a shape "
                                    "(kv_heads, n, head_dim); else pass n")
            n = k.shape[-2]
        else:
            raise TypeError("append(seq, layer, [n,] k, v)")
        sh = self.seq_info(seq).shape
        self._layer(sh, layer)
        n = _uint("n", n)
        if n < 1:
            raise ArgumentError("n = 0: append at least one token")
        want = (sh.kv_heads, n, sh.head_dim)
        kp, ka, _ = _as_input(k, sh.dtype, want, "k")
        vp, va, _ = _as_input(v, sh.dtype, want, "v")
        rc = _load().ice_append(self._h, seq, layer, n, kp, vp)
        if rc == -errno.EINVAL:  # shape and layer are checked above: what is left is the keys
            raise ArgumentError("ice_append(seq %d, layer %d, n %d) refused k: a key that is not "
                                "finite (NaN or inf)" % (seq, layer, n))
        if rc == -errno.ENOSPC:
            raise IceError(errno.ENOSPC, "ice_append: the engine is full (its tiers, config "
                                         "dram_bytes and nvme_bytes, or host_bytes): nothing "
                                         "was appended; close sequences or raise them")
        if rc == -errno.EDQUOT:
            raise IceError(errno.EDQUOT, "ice_append: past this client's quota (config "
                                         "client_host_bytes, client_dram_pages, "
                                         "client_nvme_pages): nothing was appended")
        _check(rc, "ice_append")

    def _query(self, seq, layer, q):
        sh = self.seq_info(seq).shape
        self._layer(sh, layer)
        qp, qa, _ = _as_input(q, F32, (sh.q_heads, sh.head_dim), "q")
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
        if rc == -errno.ENOENT:
            raise IceError(errno.ENOENT, "sequence %d is not open in this context" % seq)
        _check(rc, "select(seq %d, layer %d)" % (seq, layer))
        if rc == 0:  # every layer that holds a token has a sink or window page
            raise IceError(errno.ENODATA, "layer %d of sequence %d holds no tokens: append "
                                          "to it before selecting" % (layer, seq))
        return PageTable(out, rc)

    def select(self, seq, layer, q):
        """Page table for one decode step of one layer. q: [q_heads][head_dim], the queries
        before the 1/sqrt(head_dim) softmax scale (the engine applies it when it shares a KV
        head's pages among its query heads). Attend only the rows each ref's mask marks
        (PageTable.rows_mask()): retrieved pages carry the budget's tokens chosen among more
        pages than it holds."""
        sh, qp, qa = self._query(seq, layer, q)
        return self._select(_load().ice_select, seq, layer, qp)

    def select_rest(self, seq, layer, q, out=None):
        """select, plus the engine's estimate of what the query heads would attend beyond the
        table: Rest(lse, value), lse [q_heads] the log of that part's softmax weight at scale
        1/sqrt(head_dim) (-inf when nothing is left out) and value [q_heads][head_dim] its mean
        V, both float32 views of one [q_heads][head_dim + 1] array (out, when given: numpy
        float32, or a torch float32 CPU tensor). Merge: (sum e^s v + e^lse value) / (sum e^s +
        e^lse)."""
        sh, qp, qa = self._query(seq, layer, q)
        d1 = sh.head_dim + 1
        if out is None:
            out = np.empty((sh.q_heads, d1), dtype=np.float32)
        nb = sh.q_heads * d1 * 4
        rp = _as_output(out, nb, F32, "out")
        refs = self._select(_load().ice_select_rest, seq, layer, qp, rp, nb)
        arr = out.reshape(sh.q_heads, d1)
        return refs, Rest(arr[:, 0], arr[:, 1:])

    def fetch(self, seq, layer, refs, out=None):
        """Pages of a table into out (a contiguous numpy array or CPU torch tensor of the
        storage dtype with room for len(refs) pages; bf16 as torch.bfloat16 or numpy uint16),
        else into a new numpy array. Returns the pages as [n][2][16][head_dim]: K rows then V
        rows, zeros past each page's fill (a view of out's first n pages)."""
        info = self.seq_info(seq)
        sh = info.shape
        self._layer(sh, layer)
        if isinstance(refs, PageTable):
            arr, n = refs._arr, len(refs)
        else:
            refs = list(refs)
            n = len(refs)
            arr = (PageRef * max(n, 1))(*refs)
        shape = (n, 2, PAGE_TOKENS, sh.head_dim)
        if out is None:
            out = np.empty(shape, dtype=_NP_DTYPE[sh.dtype])
        nb = info.page_bytes * n
        ptr = _as_output(out, nb, sh.dtype, "out")
        if n:
            rc = _load().ice_fetch(self._h, seq, layer, arr, n, ptr, nb)
            if rc == -errno.EINVAL:
                raise ArgumentError("fetch: a ref names no page of sequence %d, layer %d (pass "
                                    "the table select returned for this layer)" % (seq, layer))
            _check(rc, "ice_fetch")
        count = nb // _ESIZE[sh.dtype]
        if not (_is_torch(out) or isinstance(out, np.ndarray)):
            return np.frombuffer(out, dtype=_NP_DTYPE[sh.dtype], count=count).reshape(shape)
        return out.reshape(-1)[:count].reshape(shape)

    def attend(self, seq, layer, q, scale=None, rest=True, pages=None):
        """One decode step of one layer in one call: select_rest (or select when rest is
        False), fetch and icecache.attention.attend. q: [q_heads][head_dim], the model's
        queries; scale: its softmax scale (default 1/sqrt(head_dim); another is folded into
        the query the engine ranks with). pages: a reusable fetch buffer (see fetch). Returns
        the attention output, a [q_heads][head_dim] float32 torch tensor. Needs torch."""
        from .attention import attend
        import torch
        sh = self.seq_info(seq).shape
        q = torch.as_tensor(q).reshape(sh.q_heads, sh.head_dim).float()
        if scale is not None and abs(scale * math.sqrt(sh.head_dim) - 1.0) > 1e-7:
            qe = q * (scale * math.sqrt(sh.head_dim))
        else:
            qe = q
        if rest:
            refs, r = self.select_rest(seq, layer, qe)
        else:
            refs, r = self.select(seq, layer, qe), None
        got = self.fetch(seq, layer, refs, out=pages)
        return attend(q, refs, got, sh.kv_heads, r, scale)

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
