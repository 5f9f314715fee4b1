"""Page-table attention in torch: what a decode step computes from a select's table, the
fetched pages and the rest term (icecache.Context.attend does all three in one call)."""
import math

import torch

from . import PAGE_TOKENS

# Tables of at most this many refs per KV head are attended in one masked matrix product over
# all heads (fewer, larger torch calls: 0.20 against 0.34 ms for 42 refs, SmolLM2's shape);
# larger ones (dense layers) head by head, which does not score rows of other heads.
VECTOR_REFS_PER_HEAD = 64


def attend(q, refs, pages, kv_heads, rest=None, scale=None):
    """Attention output [q_heads][head_dim] (float32) of one decode step of one layer.

    q: [q_heads][head_dim] (any shape of that size), the model's queries; refs: the PageTable
    select returned; pages: what fetch wrote for it, [n][2][16][head_dim] (torch or numpy);
    kv_heads: the sequence's; rest: select_rest's Rest, or None to attend the table alone;
    scale: the softmax scale (default 1/sqrt(head_dim), the scale rest's lse is at). Each query
    head attends the rows the masks of its KV head's refs mark, and the rest term as one more
    token: (sum_t e^{s_t} v_t + e^{lse} value) / (sum_t e^{s_t} + e^{lse})."""
    pages = torch.as_tensor(pages)
    n, _, P, d = pages.shape
    if n != len(refs) or P != PAGE_TOKENS:
        raise ValueError("pages has shape %s: expected (%d, 2, %d, head_dim), one page per ref"
                         % (tuple(pages.shape), len(refs), PAGE_TOKENS))
    q = torch.as_tensor(q).reshape(-1, d).float()
    hq = q.shape[0]
    if hq % kv_heads:
        raise ValueError("q has %d heads: expected a multiple of kv_heads = %d" % (hq, kv_heads))
    g = hq // kv_heads
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if pages.dtype == torch.uint16:  # numpy's bfloat16 bit patterns
        pages = pages.view(torch.bfloat16)
    pages = pages.float()
    rows = torch.from_numpy(refs.rows_mask())
    lse = value = None
    if rest is not None:
        lse, value = torch.as_tensor(rest.lse), torch.as_tensor(rest.value)
    if n <= VECTOR_REFS_PER_HEAD * kv_heads:
        # every query head against every row, other heads' rows and unmarked rows masked out
        kvh = torch.from_numpy(refs.kv_head.astype("int64"))
        own = kvh[None, :, None] == (torch.arange(hq) // g)[:, None, None]
        s = (q @ pages[:, 0].reshape(n * P, d).T) * scale
        s = s.masked_fill(~(own & rows[None]).reshape(hq, n * P), float("-inf"))
        v = pages[:, 1].reshape(n * P, d)
        if lse is None:
            return torch.softmax(s, dim=1) @ v
        w = torch.softmax(torch.cat([s, lse[:, None]], dim=1), dim=1)
        return w[:, :-1] @ v + w[:, -1:] * value
    off = refs.head_offsets(kv_heads)
    out = torch.empty(hq, d, dtype=torch.float32)
    for h in range(kv_heads):
        a, z = int(off[h]), int(off[h + 1])
        m = rows[a:z].reshape(-1)
        kh = pages[a:z, 0].reshape(-1, d)[m]
        vh = pages[a:z, 1].reshape(-1, d)[m]
        qs = slice(h * g, (h + 1) * g)
        s = (q[qs] @ kh.T) * scale
        if lse is None:
            out[qs] = torch.softmax(s, dim=1) @ vh
            continue
        w = torch.softmax(torch.cat([s, lse[qs, None]], dim=1), dim=1)
        out[qs] = w[:, :-1] @ vh + w[:, -1:] * value[qs]
    return out
