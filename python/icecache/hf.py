"""IceCache for Hugging Face transformers models (PyTorch, CPU tensors).

    from icecache.hf import enable
    cache = enable(model, budget=128)
    out = model.generate(**inputs, past_key_values=cache, max_new_tokens=32)

enable() registers an attention function named "icecache" (once per process) and sets the
model to it, then returns an IceCache: a transformers Cache whose layers append each step's K
and V to an IceCache engine (embedded in this process, or icecached with socket=...). The
prompt is attended exactly (prefill runs SDPA over the prompt's own K/V). Each decode step,
per layer, hands the query to the engine (ice_select_rest), fetches the pages it chose and
attends the rows their masks mark, per KV head, joined by the engine's rest term: what the
full softmax would give, estimated, for the pages left out. Layers below dense_layers attend
every page. Without an IceCache the model's attention is plain SDPA, so the same model runs
with a DynamicCache as before.

budget counts tokens attended per layer and KV head: sink (the first tokens) + window (the
last ones) + retrieved (budget - sink - window, chosen by the engine), as icerun's icecache
mode counts it (docs/ICERUN.md). A budget at or over the context attends everything.

Not supported yet (each raises NotImplementedError saying so): beam search and contrastive
search (they reorder or repeat the batch: the engine has no sequence fork), assisted decoding
(it crops the cache: the engine has no truncate), a second prompt chunk after the first
(chunked prefill, a continued conversation: start a new cache), padded batches, sliding-window
and soft-capped attention layers, tensors on a GPU. One IceCache holds one generation: make a
new one (or reset() it) for the next prompt.
"""
import math
import weakref

import torch
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface

import icecache
from icecache.attention import attend

NAME = "icecache"

_TORCH_DTYPES = {torch.float32: icecache.F32, torch.float16: icecache.F16,
                 torch.bfloat16: icecache.BF16}
_DTYPE_BY_NAME = {"float32": icecache.F32, "float16": icecache.F16, "bfloat16": icecache.BF16}
_STORAGE_TORCH = {icecache.F32: torch.float32, icecache.F16: torch.float16,
                  icecache.BF16: torch.bfloat16}

_NO_FORK = ("IceCache: %s needs the engine to %s sequences, which it cannot yet (issue 13, "
            "point 4): use greedy or sampling decoding (num_beams=1, no assistant_model), or a "
            "DynamicCache")


def register():
    """Registers the "icecache" attention function and its mask (transformers' SDPA mask)
    with transformers. enable() calls it; idempotent."""
    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def enable(model, budget=128, **kwargs):
    """Sets model's attention to IceCache's and returns a new IceCache for it (kwargs: those
    of IceCache). Pass the cache to model.generate(past_key_values=cache) or forward()."""
    register()
    _check_model(model.config)
    try:
        model.set_attn_implementation(NAME)
    except (AttributeError, ValueError):
        model.config._attn_implementation = NAME
    return IceCache(model, budget, **kwargs)


def _text_config(config):
    get = getattr(config, "get_text_config", None)
    return get() if get else config


def _check_model(config):
    c = _text_config(config)
    if getattr(c, "attn_logit_softcapping", None) or getattr(c, "final_logit_softcapping", None):
        raise NotImplementedError("IceCache: soft-capped attention logits (Gemma 2 style) are "
                                  "not supported: the engine ranks pages by plain q.k")
    types = getattr(c, "layer_types", None) or []
    if any(t != "full_attention" for t in types) or \
            (getattr(c, "sliding_window", None) and getattr(c, "use_sliding_window", True)
             and not types):
        raise NotImplementedError("IceCache: sliding-window (or non-attention) layers are not "
                                  "supported (layer_types %s): every layer must be "
                                  "full attention" % (sorted(set(types)) or "sliding_window"))


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function "icecache": the cache's page-table attention when key
    comes from an IceCache decode step, SDPA otherwise (the prompt, or another cache)."""
    tag = getattr(key, "_icecache", None)
    if tag is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    cache, layer, past = tag
    if attention_mask is not None and attention_mask.dtype == torch.bool and \
            not bool(attention_mask[..., -1, :].all()):
        raise NotImplementedError("IceCache: padded batches are not supported (the engine "
                                  "would attend the pad tokens): generate one prompt at a "
                                  "time, or prompts of one length")
    if past == 0:  # the prompt: exact, over its own K/V
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    return cache._attend(layer, query, scaling), None


class IceLayer(CacheLayerMixin):
    """One model layer of an IceCache: it holds no K/V, only the count the engine has."""

    is_compileable = False
    is_sliding = False
    supports_early_init = False

    def __init__(self, cache, layer):
        super().__init__()
        self._cache = weakref.ref(cache)  # the cache owns its layers, not the reverse
        self.layer = layer
        self.tokens = 0

    def lazy_initialization(self, key_states, value_states):
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        return self._cache()._update(self, key_states, value_states)

    def get_mask_sizes(self, query_length):
        return self.tokens + query_length, 0

    def get_seq_length(self):
        return self.tokens

    def get_max_length(self):
        return -1

    def offload(self):
        pass

    def prefetch(self):
        pass

    def reset(self):
        self.tokens = 0
        self.is_initialized = False

    def reorder_cache(self, beam_idx):
        raise NotImplementedError(_NO_FORK % ("beam search (reorder_cache)", "fork and reorder"))

    def crop(self, tokens_to_remove):
        raise NotImplementedError(_NO_FORK % ("assisted decoding (crop)", "truncate"))

    def batch_repeat_interleave(self, repeats):
        raise NotImplementedError(_NO_FORK % ("repeating the batch (beam search, "
                                              "num_return_sequences)", "fork"))

    def batch_select_indices(self, indices):
        raise NotImplementedError(_NO_FORK % ("selecting batch rows (contrastive search)",
                                              "fork"))


class IceCache(Cache):
    """A transformers Cache backed by an IceCache engine. model: the model (or its config).
    budget: tokens attended per layer and KV head (sink + window + retrieved); sink, window:
    tokens of each (rounded up to 16); dense_layers: the first layers attended in full
    (default 2, as the reference). dtype: how K/V are stored (None: the model's dtype;
    "float32", "float16", "bfloat16" or icecache.F32/F16/BF16). context: an icecache.Context
    to use (its sequences are this cache's until close()); else socket: a daemon's socket path
    (True: the default one); else an embedded engine opened with engine_config (a dict or
    "key = value" text) and, unless it says, slot_bytes sized for the shape."""

    def __init__(self, model, budget=128, *, sink=16, window=16, dense_layers=2, dtype=None,
                 context=None, socket=None, engine_config=None):
        config = _text_config(getattr(model, "config", model))
        _check_model(config)
        self.n_layers = config.num_hidden_layers
        self.q_heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.q_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.q_heads
        self.group = self.q_heads // self.kv_heads
        if dtype is None:
            dtype = getattr(model, "dtype", None) or getattr(config, "torch_dtype", None) \
                or torch.float32
        if isinstance(dtype, str):
            dtype = _DTYPE_BY_NAME.get(dtype, dtype)
        if isinstance(dtype, torch.dtype):
            dtype = _TORCH_DTYPES.get(dtype, dtype)
        if dtype not in icecache.DTYPE_NAMES:
            raise icecache.ArgumentError("dtype = %r: expected float32, float16 or bfloat16"
                                         % (dtype,))
        self.dtype = dtype
        for name, x in (("budget", budget), ("sink", sink), ("window", window),
                        ("dense_layers", dense_layers)):
            icecache._uint(name, x)
        P = icecache.PAGE_TOKENS
        fixed = -(-sink // P) * P + -(-window // P) * P
        if budget < fixed:
            raise icecache.ArgumentError(
                "budget = %d tokens: at least sink + window = %d (each rounded up to %d), plus "
                "the tokens to retrieve" % (budget, fixed, P))
        self.budget = dict(sink=sink, window=window, retrieved=budget - fixed,
                           dense_layers=min(dense_layers, self.n_layers))
        self._own_ctx = context is None
        if context is not None:
            self.ctx = context
        elif socket:
            self.ctx = icecache.Context.connect(None if socket is True else socket)
        else:
            cfg = engine_config
            if isinstance(cfg, dict):
                cfg = "".join("%s = %s\n" % kv for kv in cfg.items())
            cfg = cfg or ""
            if "slot_bytes" not in cfg:  # a page of this shape fits the engine's slots
                slot = max(8192, icecache.slot_bytes_for(self.head_dim, dtype))
                cfg += "\nslot_bytes = %d\n" % slot
            self.ctx = icecache.Context.embedded(cfg)
        self.seqs = None  # one engine sequence per batch row, opened by the first update
        self._pages = None  # fetch buffer, grown to the largest table
        self._rest = torch.empty(self.q_heads, self.head_dim + 1, dtype=torch.float32)
        super().__init__(layers=[IceLayer(self, i) for i in range(self.n_layers)])

    @property
    def is_croppable(self):
        # transformers asks this before assisted decoding's first crop; say what is missing
        raise NotImplementedError(_NO_FORK % ("assisted decoding", "truncate"))

    def _open(self, batch):
        self.seqs = [self.ctx.seq_open(layers=self.n_layers, q_heads=self.q_heads,
                                       kv_heads=self.kv_heads, head_dim=self.head_dim,
                                       dtype=self.dtype, **self.budget) for _ in range(batch)]

    def _update(self, lay, key_states, value_states):
        b, hkv, n, d = key_states.shape
        if key_states.device.type != "cpu":
            raise NotImplementedError("IceCache: the model runs on %s; this integration "
                                      "takes CPU tensors (the device path is issue 13, points "
                                      "1-2)" % key_states.device)
        if (hkv, d) != (self.kv_heads, self.head_dim):
            raise icecache.ArgumentError("layer %d K has %d heads of %d: the cache was made for "
                                         "%d of %d" % (lay.layer, hkv, d, self.kv_heads,
                                                       self.head_dim))
        if self.seqs is None:
            self._open(b)
        elif b != len(self.seqs):
            raise NotImplementedError(_NO_FORK % ("a batch of %d rows after %d"
                                                  % (b, len(self.seqs)), "fork"))
        past = lay.tokens
        if past and n > 1:
            raise NotImplementedError(
                "IceCache: %d new tokens after %d cached (chunked prefill, a continued "
                "conversation, assisted decoding's candidates): only the prompt comes in "
                "one piece, then one token a step. Make a new cache for a new prompt"
                % (n, past))
        for i, seq in enumerate(self.seqs):
            self.ctx.append(seq, lay.layer, key_states[i], value_states[i])
        lay.tokens += n
        k, v = key_states[...], value_states[...]  # new tensor objects, to carry the tag
        k._icecache = (self, lay.layer, past)
        return k, v

    def _attend(self, layer, query, scaling):
        """One decode step of one layer: query [b][q_heads][1][head_dim] -> attention output
        [b][1][q_heads][head_dim], over the pages the engine selects plus its rest term."""
        b, hq, _, d = query.shape
        P = icecache.PAGE_TOKENS
        scale = scaling if scaling is not None else d ** -0.5
        # the engine takes q before its 1/sqrt(d): fold any other model scale into q
        qmul = scale * math.sqrt(d)
        out = torch.empty(b, 1, hq, d, dtype=query.dtype)
        for i, seq in enumerate(self.seqs):
            q = query[i, :, 0, :].float()
            refs, rest = self.ctx.select_rest(seq, layer, q if abs(qmul - 1.0) < 1e-7 else q * qmul,
                                              out=self._rest)
            n = len(refs)
            if self._pages is None or self._pages.shape[0] < n:
                self._pages = torch.empty(max(n, 2 * (0 if self._pages is None else
                                                      self._pages.shape[0])),
                                          2, P, d, dtype=_STORAGE_TORCH[self.dtype])
            pages = self.ctx.fetch(seq, layer, refs, out=self._pages)
            out[i, 0] = attend(q, refs, pages, self.kv_heads, rest, scale).to(query.dtype)
        return out

    def reset(self):
        """Drops what the cache holds (its sequences), for another prompt."""
        self._close_seqs()
        for lay in self.layers:
            lay.reset()

    def _close_seqs(self):
        if self.seqs and self.ctx is not None and self.ctx._h:
            for seq in self.seqs:
                try:
                    self.ctx.seq_close(seq)
                except OSError:
                    pass
        self.seqs = None

    def close(self):
        """Frees the engine's sequences, and the context when the cache opened it."""
        self._close_seqs()
        if self._own_ctx and self.ctx is not None:
            self.ctx.close()
        self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def stats(self):
        """The engine's counters (icecache.Context.stats)."""
        return self.ctx.stats()
