/*
 * Tokenizers from GGUF metadata: byte-level BPE (hash tables over the vocabulary and merge
 * list, GPT-2 pre-tokenizer) and SentencePiece BPE (tokenizer.ggml.model "llama": merges by
 * piece score, byte fallback).
 */
#include "tok.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

#define TOK_TYPE_NORMAL 1
#define TOK_TYPE_CONTROL 3
#define TOK_TYPE_USER 4
#define TOK_TYPE_UNUSED 5
#define TOK_TYPE_BYTE 6

struct hent {
	const char *s;
	uint32_t len;
	int32_t val;
};

struct htab {
	struct hent *e;
	uint32_t mask;
};

struct tok {
	int n;
	struct gguf_str *str; /* token strings (byte-level mapped UTF-8) */
	int32_t *type;
	struct htab vocab;  /* string -> id */
	struct htab merges; /* "left right" -> rank */
	int32_t *special;   /* ids of control/user-defined tokens, longest first */
	int nspecial;
	int bos, eos, unk;
	bool add_bos, space_prefix;
	/* SentencePiece mode: piece scores, the <0xXX> byte pieces, specials bucketed by first byte */
	bool spm;
	float *score;
	int32_t byte_piece[256];
	int32_t *bucket; /* special ids grouped by first byte, longest first in each group */
	int32_t bstart[257];
	uint16_t byte2cp[256]; /* GPT-2 bytes_to_unicode */
	int16_t cp2byte[512];
	int32_t byte_tok[256]; /* token id of each single byte */
};

static uint32_t hash(const char *s, size_t n)
{
	uint32_t h = 2166136261u;
	size_t i;

	for (i = 0; i < n; i++)
		h = (h ^ (uint8_t)s[i]) * 16777619u;
	return h;
}

static int ht_init(struct htab *h, size_t n)
{
	size_t cap = 16;

	while (cap < 2 * n)
		cap <<= 1;
	h->e = calloc(cap, sizeof(*h->e));
	if (!h->e)
		return -ENOMEM;
	h->mask = (uint32_t)cap - 1;
	return 0;
}

/* First insert wins (GGUF vocabularies can repeat a string; the lower id is the canonical one). */
static void ht_put(struct htab *h, const char *s, size_t n, int32_t v)
{
	uint32_t i = hash(s, n) & h->mask;

	while (h->e[i].s) {
		if (h->e[i].len == n && !memcmp(h->e[i].s, s, n))
			return;
		i = (i + 1) & h->mask;
	}
	h->e[i].s = s;
	h->e[i].len = (uint32_t)n;
	h->e[i].val = v;
}

static int32_t ht_get(const struct htab *h, const char *s, size_t n)
{
	uint32_t i = hash(s, n) & h->mask;

	while (h->e[i].s) {
		if (h->e[i].len == n && !memcmp(h->e[i].s, s, n))
			return h->e[i].val;
		i = (i + 1) & h->mask;
	}
	return -1;
}

static size_t utf8_put(uint32_t cp, char *o)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xC0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xE0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		o[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	o[0] = (char)(0xF0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	o[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* Decodes one UTF-8 sequence; invalid bytes come back as themselves with length 1. */
static size_t utf8_get(const uint8_t *s, size_t n, uint32_t *cp)
{
	size_t len, i;
	uint32_t c = s[0];

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if ((c & 0xE0) == 0xC0) {
		len = 2;
		c &= 0x1F;
	} else if ((c & 0xF0) == 0xE0) {
		len = 3;
		c &= 0x0F;
	} else if ((c & 0xF8) == 0xF0) {
		len = 4;
		c &= 0x07;
	} else {
		*cp = 0xFFFD00 | s[0];
		return 1;
	}
	if (len > n)
		goto bad;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xC0) != 0x80)
			goto bad;
		c = (c << 6) | (s[i] & 0x3F);
	}
	*cp = c;
	return len;
bad:
	*cp = 0xFFFD00 | s[0];
	return 1;
}

/*
 * Character classes for the pre-tokenizer. ASCII is exact; beyond ASCII this is a table of the
 * main letter blocks (Latin, Greek, Cyrillic, Kana, Hangul, CJK) rather than full Unicode
 * categories, which is enough for English prompts and keeps the runner free of ICU.
 */
enum cls { C_LETTER, C_DIGIT, C_SPACE, C_OTHER };

static enum cls classify(uint32_t c)
{
	if (c < 0x80) {
		if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z')
			return C_LETTER;
		if (c >= '0' && c <= '9')
			return C_DIGIT;
		if (c == ' ' || (c >= 9 && c <= 13))
			return C_SPACE;
		return C_OTHER;
	}
	if (c > 0xFFFFFF)
		return C_OTHER; /* invalid byte */
	if (c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
	    c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000)
		return C_SPACE;
	if (c == 0xB2 || c == 0xB3 || c == 0xB9 || (c >= 0xBC && c <= 0xBE) ||
	    (c >= 0x660 && c <= 0x669) || (c >= 0xFF10 && c <= 0xFF19))
		return C_DIGIT;
	if (c == 0xAA || c == 0xB5 || c == 0xBA ||
	    (c >= 0xC0 && c <= 0x24F && c != 0xD7 && c != 0xF7) || (c >= 0x250 && c <= 0x2AF) ||
	    (c >= 0x370 && c <= 0x3FF && c != 0x37E && c != 0x387) ||
	    (c >= 0x400 && c <= 0x52F && !(c >= 0x482 && c <= 0x489)) ||
	    (c >= 0x5D0 && c <= 0x5EA) || (c >= 0x620 && c <= 0x64A) ||
	    (c >= 0x1E00 && c <= 0x1FFF) || (c >= 0x3040 && c <= 0x30FF && c != 0x30FB) ||
	    (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x4E00 && c <= 0x9FFF) ||
	    (c >= 0xAC00 && c <= 0xD7AF) || (c >= 0xFF21 && c <= 0xFF3A) ||
	    (c >= 0xFF41 && c <= 0xFF5A))
		return C_LETTER;
	return C_OTHER;
}

/* ---- SentencePiece BPE (tokenizer.ggml.model "llama": Gemma, Llama 2) ---- */

static bool is_spm(const struct gguf *g)
{
	const struct gguf_kv *kv = gguf_find(g, "tokenizer.ggml.model");
	uint64_t len;

	if (!kv || kv->type != GGUF_STR)
		return false;
	memcpy(&len, kv->val, 8);
	return len == 5 && !memcmp(kv->val + 8, "llama", 5);
}

static bool get_bool(const struct gguf *g, const char *key, bool dflt)
{
	const struct gguf_kv *kv = gguf_find(g, key);

	return kv && kv->type == GGUF_BOOL ? kv->val[0] != 0 : dflt;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/*
 * Special pieces (control and user-defined) grouped by first byte, longest first inside a
 * group, so matching them in the text costs a few compares per byte even with Gemma's 6,000
 * control pieces (all starting with '<') and its runs of spaces, tabs and newlines.
 */
static int spm_buckets(struct tok *t)
{
	uint64_t *key = malloc((size_t)(t->nspecial ? t->nspecial : 1) * sizeof(*key));
	int i, k = 0;

	t->bucket = malloc((size_t)(t->nspecial ? t->nspecial : 1) * sizeof(*t->bucket));
	if (!key || !t->bucket) {
		free(key);
		return -ENOMEM;
	}
	for (i = 0; i < t->nspecial; i++) {
		const struct gguf_str *s = &t->str[t->special[i]];
		size_t l = s->len < 0xFFFF ? s->len : 0xFFFF;

		if (s->len)
			key[k++] = (uint64_t)(uint8_t)s->s[0] << 48 | (uint64_t)(0xFFFF - l) << 24 |
				   (uint64_t)t->special[i];
	}
	qsort(key, (size_t)k, sizeof(*key), cmp_u64);
	memset(t->bstart, 0, sizeof(t->bstart));
	for (i = 0; i < k; i++) {
		t->bucket[i] = (int32_t)(key[i] & 0xFFFFFF);
		t->bstart[(key[i] >> 48) + 1]++;
	}
	for (i = 0; i < 256; i++)
		t->bstart[i + 1] += t->bstart[i];
	free(key);
	return 0;
}

static int spm_new(const struct gguf *g, struct tok **ret)
{
	const struct gguf_kv *kt = gguf_find(g, "tokenizer.ggml.tokens");
	const struct gguf_kv *ktype = gguf_find(g, "tokenizer.ggml.token_type");
	const struct gguf_kv *ks = gguf_find(g, "tokenizer.ggml.scores");
	const uint8_t *p;
	struct tok *t;
	uint64_t i, len;
	uint32_t u;
	int err = -ENOMEM, b;
	char hex[8];

	if (!kt || !ktype || !ks || kt->type != GGUF_ARR || kt->arr_type != GGUF_STR ||
	    kt->arr_len == 0 || kt->arr_len > (1u << 22) || ktype->type != GGUF_ARR ||
	    ktype->arr_type != GGUF_I32 || ktype->arr_len != kt->arr_len || ks->type != GGUF_ARR ||
	    ks->arr_type != GGUF_F32 || ks->arr_len != kt->arr_len)
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->spm = true;
	t->n = (int)kt->arr_len;
	t->str = calloc((size_t)t->n, sizeof(*t->str));
	t->type = calloc((size_t)t->n, sizeof(*t->type));
	t->special = calloc((size_t)t->n, sizeof(*t->special));
	t->score = malloc((size_t)t->n * sizeof(*t->score));
	if (!t->str || !t->type || !t->special || !t->score || ht_init(&t->vocab, (size_t)t->n))
		goto out_free;
	/* scores and types may sit unaligned in the mapping: copied out */
	memcpy(t->score, ks->val, (size_t)t->n * sizeof(float));
	memcpy(t->type, ktype->val, (size_t)t->n * sizeof(int32_t));
	p = kt->val;
	for (i = 0; i < (uint64_t)t->n; i++) {
		memcpy(&len, p, 8);
		t->str[i].s = (const char *)p + 8;
		t->str[i].len = len;
		p += 8 + len;
		ht_put(&t->vocab, t->str[i].s, len, (int32_t)i);
		if (t->type[i] == TOK_TYPE_CONTROL || t->type[i] == TOK_TYPE_USER)
			t->special[t->nspecial++] = (int32_t)i;
	}
	for (b = 0; b < 256; b++) {
		int32_t id;

		snprintf(hex, sizeof(hex), "<0x%02X>", b);
		id = ht_get(&t->vocab, hex, strlen(hex));
		t->byte_piece[b] = id >= 0 && t->type[id] == TOK_TYPE_BYTE ? id : -1;
	}
	if (spm_buckets(t))
		goto out_free;
	t->bos = t->eos = t->unk = -1;
	if (!gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u) && u < (uint32_t)t->n)
		t->bos = (int)u;
	if (!gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u) && u < (uint32_t)t->n)
		t->eos = (int)u;
	if (!gguf_get_u32(g, "tokenizer.ggml.unknown_token_id", &u) && u < (uint32_t)t->n)
		t->unk = (int)u;
	t->add_bos = get_bool(g, "tokenizer.ggml.add_bos_token", true);
	t->space_prefix = get_bool(g, "tokenizer.ggml.add_space_prefix", true);
	*ret = t;
	return 0;
out_free:
	tok_free(t);
	return err;
}

/* A candidate merge of adjacent symbols left, right into a piece of the given score. */
struct spm_pair {
	float score;
	int left, right, size;
};

struct spm_enc {
	const struct tok *t;
	int32_t *out;
	size_t cap, n;
	char *esc; /* the fragment with spaces escaped to U+2581 */
	size_t esc_cap;
	int *start, *len, *next, *prev;
	size_t sym_cap;
	struct spm_pair *heap;
	size_t heap_cap, nheap;
	bool first; /* no fragment encoded yet (the optional space prefix goes on the first) */
	int err;
};

static void spm_emit(struct spm_enc *e, int32_t id)
{
	if (e->err)
		return;
	if (e->n >= e->cap) {
		e->err = -ENOSPC;
		return;
	}
	e->out[e->n++] = id;
}

/* The highest score first; equal scores: the leftmost pair (SentencePiece's order). */
static bool pair_before(const struct spm_pair *a, const struct spm_pair *b)
{
	return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(struct spm_enc *e, struct spm_pair pr)
{
	size_t i;

	if (buf_grow(&e->heap, &e->heap_cap, e->nheap + 1, sizeof(*e->heap))) {
		e->err = -ENOMEM;
		return;
	}
	i = e->nheap++;
	while (i > 0 && pair_before(&pr, &e->heap[(i - 1) / 2])) {
		e->heap[i] = e->heap[(i - 1) / 2];
		i = (i - 1) / 2;
	}
	e->heap[i] = pr;
}

static struct spm_pair heap_pop(struct spm_enc *e)
{
	struct spm_pair top = e->heap[0], last = e->heap[--e->nheap];
	size_t i = 0, c;

	while ((c = 2 * i + 1) < e->nheap) {
		if (c + 1 < e->nheap && pair_before(&e->heap[c + 1], &e->heap[c]))
			c++;
		if (!pair_before(&e->heap[c], &last))
			break;
		e->heap[i] = e->heap[c];
		i = c;
	}
	if (e->nheap)
		e->heap[i] = last;
	return top;
}

/* Pieces a merge may produce: SentencePiece's normal, user-defined and unused ones. */
static int32_t spm_piece(const struct tok *t, const char *s, size_t n)
{
	int32_t id = ht_get(&t->vocab, s, n);

	if (id < 0 || (t->type[id] != TOK_TYPE_NORMAL && t->type[id] != TOK_TYPE_USER &&
		       t->type[id] != TOK_TYPE_UNUSED))
		return -1;
	return id;
}

static void spm_try(struct spm_enc *e, int l, int r)
{
	int32_t id;

	if (l < 0 || r < 0)
		return;
	id = spm_piece(e->t, e->esc + e->start[l], (size_t)(e->len[l] + e->len[r]));
	if (id >= 0)
		heap_push(e, (struct spm_pair){ e->t->score[id], l, r, e->len[l] + e->len[r] });
}

/* BPE over one fragment of plain text (no special pieces in it). */
static void spm_fragment(struct spm_enc *e, const uint8_t *s, size_t n)
{
	const struct tok *t = e->t;
	size_t i, o = 0, need = 3 * n + 3;
	int nsym = 0, j;

	if (buf_grow(&e->esc, &e->esc_cap, need, 1) ||
	    buf_grow(&e->start, &e->sym_cap, need, sizeof(int))) {
		e->err = -ENOMEM;
		return;
	}
	/* start and the other symbol arrays share one capacity: grown together */
	{
		size_t c = 0;

		if (buf_grow(&e->len, &c, e->sym_cap, sizeof(int)) ||
		    (c = 0, buf_grow(&e->next, &c, e->sym_cap, sizeof(int))) ||
		    (c = 0, buf_grow(&e->prev, &c, e->sym_cap, sizeof(int)))) {
			e->err = -ENOMEM;
			return;
		}
	}
	if (e->first && t->space_prefix) {
		memcpy(e->esc, "\xE2\x96\x81", 3);
		o = 3;
	}
	e->first = false;
	for (i = 0; i < n; i++) {
		if (s[i] == ' ') {
			memcpy(e->esc + o, "\xE2\x96\x81", 3);
			o += 3;
		} else {
			e->esc[o++] = (char)s[i];
		}
	}
	for (i = 0; i < o;) {
		uint32_t cp;
		size_t l = utf8_get((const uint8_t *)e->esc + i, o - i, &cp);

		e->start[nsym] = (int)i;
		e->len[nsym] = (int)l;
		e->prev[nsym] = nsym - 1;
		e->next[nsym] = i + l < o ? nsym + 1 : -1;
		nsym++;
		i += l;
	}
	e->nheap = 0;
	for (j = 0; j + 1 < nsym; j++)
		spm_try(e, j, j + 1);
	while (e->nheap && !e->err) {
		struct spm_pair pr = heap_pop(e);
		int l = pr.left, r = pr.right;

		/* stale: a side was merged away, or grew, since the pair was queued */
		if (!e->len[l] || !e->len[r] || e->next[l] != r || e->len[l] + e->len[r] != pr.size)
			continue;
		e->len[l] += e->len[r];
		e->len[r] = 0;
		e->next[l] = e->next[r];
		if (e->next[r] >= 0)
			e->prev[e->next[r]] = l;
		spm_try(e, e->prev[l], l);
		spm_try(e, l, e->next[l]);
	}
	for (j = nsym ? 0 : -1; j >= 0; j = e->next[j]) {
		int32_t id = spm_piece(t, e->esc + e->start[j], (size_t)e->len[j]);

		if (id >= 0) {
			spm_emit(e, id);
			continue;
		}
		/* byte fallback: one <0xXX> piece per byte of the symbol */
		for (i = (size_t)e->start[j]; i < (size_t)(e->start[j] + e->len[j]); i++) {
			id = t->byte_piece[(uint8_t)e->esc[i]];
			spm_emit(e, id >= 0 ? id : t->unk);
		}
	}
}

/*
 * User-defined pieces are matched in the text always, control pieces only when special is set
 * (as SentencePiece treats them); the text between them is one fragment each.
 */
static int spm_encode(const struct tok *t, const char *text, size_t len, bool special, int32_t *out,
		      size_t cap)
{
	const uint8_t *s = (const uint8_t *)text;
	struct spm_enc e = { .t = t, .out = out, .cap = cap, .first = true };
	size_t i = 0, seg = 0;
	int k, hit;

	while (i < len && !e.err) {
		hit = -1;
		for (k = t->bstart[s[i]]; k < t->bstart[s[i] + 1]; k++) {
			int32_t id = t->bucket[k];
			const struct gguf_str *ss = &t->str[id];

			if (t->type[id] == TOK_TYPE_CONTROL && !special)
				continue;
			if (ss->len <= len - i && !memcmp(s + i, ss->s, ss->len)) {
				hit = id;
				break;
			}
		}
		if (hit < 0) {
			i++;
			continue;
		}
		if (i > seg)
			spm_fragment(&e, s + seg, i - seg);
		spm_emit(&e, hit);
		i += t->str[hit].len;
		seg = i;
	}
	if (len > seg)
		spm_fragment(&e, s + seg, len - seg);
	free(e.esc);
	free(e.start);
	free(e.len);
	free(e.next);
	free(e.prev);
	free(e.heap);
	return e.err ? e.err : (int)e.n;
}

static int spm_decode(const struct tok *t, int32_t id, char *buf, size_t cap)
{
	const struct gguf_str *s = &t->str[id];
	size_t i, n = 0;
	unsigned v;

	if (t->type[id] == TOK_TYPE_BYTE && s->len == 6 && sscanf(s->s, "<0x%02X>", &v) == 1) {
		if (cap < 1)
			return -ENOSPC;
		buf[0] = (char)v;
		return 1;
	}
	for (i = 0; i < s->len; i++) {
		bool ws = t->type[id] != TOK_TYPE_CONTROL && i + 3 <= s->len &&
			  !memcmp(s->s + i, "\xE2\x96\x81", 3);

		if (n >= cap)
			return -ENOSPC;
		buf[n++] = ws ? ' ' : s->s[i];
		if (ws)
			i += 2;
	}
	return (int)n;
}

int tok_new(const struct gguf *g, struct tok **ret)
{
	const struct gguf_kv *kt, *ktype, *km;
	const uint8_t *p;
	struct tok *t;
	uint32_t u;
	uint64_t i, len;
	int err, b, n;
	char buf[8];

	kt = gguf_find(g, "tokenizer.ggml.tokens");
	ktype = gguf_find(g, "tokenizer.ggml.token_type");
	km = gguf_find(g, "tokenizer.ggml.merges");
	if (is_spm(g))
		return spm_new(g, ret);
	if (!kt || !km || kt->type != GGUF_ARR || kt->arr_type != GGUF_STR ||
	    km->type != GGUF_ARR || km->arr_type != GGUF_STR || kt->arr_len == 0 ||
	    kt->arr_len > (1u << 22) || km->arr_len > (1u << 22))
		return -EINVAL;
	if (ktype && (ktype->type != GGUF_ARR || ktype->arr_type != GGUF_I32 ||
		      ktype->arr_len != kt->arr_len))
		return -EINVAL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->n = (int)kt->arr_len;
	t->str = calloc((size_t)t->n, sizeof(*t->str));
	t->type = calloc((size_t)t->n, sizeof(*t->type));
	t->special = calloc((size_t)t->n, sizeof(*t->special));
	err = -ENOMEM;
	if (!t->str || !t->type || !t->special)
		goto out_free;
	if (ht_init(&t->vocab, (size_t)t->n) || ht_init(&t->merges, km->arr_len))
		goto out_free;
	/* The parser bounds-checked both arrays, so walking them here stays inside the file. */
	p = kt->val;
	for (i = 0; i < (uint64_t)t->n; i++) {
		memcpy(&len, p, 8);
		t->str[i].s = (const char *)p + 8;
		t->str[i].len = len;
		p += 8 + len;
		ht_put(&t->vocab, t->str[i].s, len, (int32_t)i);
		t->type[i] = 1;
		if (ktype)
			memcpy(&t->type[i], ktype->val + 4 * i, 4);
		if (t->type[i] == TOK_TYPE_CONTROL || t->type[i] == TOK_TYPE_USER)
			t->special[t->nspecial++] = (int32_t)i;
	}
	p = km->val;
	for (i = 0; i < km->arr_len; i++) {
		memcpy(&len, p, 8);
		ht_put(&t->merges, (const char *)p + 8, len, (int32_t)i);
		p += 8 + len;
	}
	/* GPT-2 bytes_to_unicode: printable bytes map to themselves, the rest to 256 + k. */
	n = 0;
	for (b = 0; b < 256; b++) {
		if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255))
			t->byte2cp[b] = (uint16_t)b;
		else
			t->byte2cp[b] = (uint16_t)(256 + n++);
	}
	for (b = 0; b < 512; b++)
		t->cp2byte[b] = -1;
	for (b = 0; b < 256; b++) {
		t->cp2byte[t->byte2cp[b]] = (int16_t)b;
		len = utf8_put(t->byte2cp[b], buf);
		t->byte_tok[b] = ht_get(&t->vocab, buf, len);
	}
	t->bos = t->eos = -1;
	if (!gguf_get_u32(g, "tokenizer.ggml.bos_token_id", &u) && u < (uint32_t)t->n)
		t->bos = (int)u;
	if (!gguf_get_u32(g, "tokenizer.ggml.eos_token_id", &u) && u < (uint32_t)t->n)
		t->eos = (int)u;
	*ret = t;
	return 0;
out_free:
	tok_free(t);
	return err;
}

void tok_free(struct tok *t)
{
	if (!t)
		return;
	free(t->bucket);
	free(t->score);
	free(t->vocab.e);
	free(t->merges.e);
	free(t->str);
	free(t->type);
	free(t->special);
	free(t);
}

int tok_vocab_size(const struct tok *t)
{
	return t->n;
}

int tok_bos(const struct tok *t)
{
	return t->bos;
}

int tok_eos(const struct tok *t)
{
	return t->eos;
}

bool tok_add_bos(const struct tok *t)
{
	return t->add_bos && t->bos >= 0;
}

int tok_find(const struct tok *t, const char *s)
{
	int32_t id = ht_get(&t->vocab, s, strlen(s));

	return id < 0 ? -ENOENT : id;
}

/* Working state of one encode call. */
struct enc {
	const struct tok *t;
	int32_t *out;
	size_t cap, n;
	/* symbols of the current word: offsets into sym_buf (mapped UTF-8) */
	char *buf;
	size_t *start, *len;
	int *next;
	size_t wcap;
	char *key;
	int err;
};

static void emit(struct enc *e, int32_t id)
{
	if (e->err)
		return;
	if (e->n >= e->cap) {
		e->err = -ENOSPC;
		return;
	}
	e->out[e->n++] = id;
}

static int grow(struct enc *e, size_t nbytes)
{
	size_t c = e->wcap ? e->wcap : 64;
	void *a, *b, *d, *f, *k;

	if (nbytes <= e->wcap)
		return 0;
	while (c < nbytes)
		c *= 2;
	a = realloc(e->buf, c * 4);
	if (a)
		e->buf = a;
	b = realloc(e->start, c * sizeof(size_t));
	if (b)
		e->start = b;
	d = realloc(e->len, c * sizeof(size_t));
	if (d)
		e->len = d;
	f = realloc(e->next, c * sizeof(int));
	if (f)
		e->next = f;
	k = realloc(e->key, c * 8 + 2);
	if (k)
		e->key = k;
	if (!a || !b || !d || !f || !k)
		return -ENOMEM;
	e->wcap = c;
	return 0;
}

/* BPE over one pre-token (raw bytes). */
static void bpe_word(struct enc *e, const uint8_t *w, size_t n)
{
	const struct tok *t = e->t;
	size_t i, off = 0, kl;
	int best, bi, j, k, nsym;
	int32_t id, r;

	if (grow(e, n)) {
		e->err = -ENOMEM;
		return;
	}
	for (i = 0; i < n; i++) {
		e->start[i] = off;
		e->len[i] = utf8_put(t->byte2cp[w[i]], e->buf + off);
		off += e->len[i];
		e->next[i] = (int)i + 1 < (int)n ? (int)i + 1 : -1;
	}
	nsym = (int)n;
	/* Symbols are contiguous in buf, so merging two neighbours only extends the left length. */
	while (nsym > 1) {
		best = -1;
		bi = -1;
		for (j = 0; j >= 0 && e->next[j] >= 0; j = e->next[j]) {
			k = e->next[j];
			kl = e->len[j];
			memcpy(e->key, e->buf + e->start[j], kl);
			e->key[kl] = ' ';
			memcpy(e->key + kl + 1, e->buf + e->start[k], e->len[k]);
			r = ht_get(&t->merges, e->key, kl + 1 + e->len[k]);
			if (r >= 0 && (best < 0 || r < best)) {
				best = r;
				bi = j;
			}
		}
		if (bi < 0)
			break;
		k = e->next[bi];
		e->len[bi] += e->len[k];
		e->next[bi] = e->next[k];
		nsym--;
	}
	for (j = 0; j >= 0; j = e->next[j]) {
		id = ht_get(&t->vocab, e->buf + e->start[j], e->len[j]);
		if (id >= 0) {
			emit(e, id);
			continue;
		}
		/* Not in the vocabulary: fall back to one token per byte of this symbol. */
		for (i = e->start[j]; i < e->start[j] + e->len[j];) {
			uint32_t cp;
			size_t l = utf8_get((const uint8_t *)e->buf + i,
					    e->start[j] + e->len[j] - i, &cp);

			if (cp < 512 && t->cp2byte[cp] >= 0 && t->byte_tok[t->cp2byte[cp]] >= 0)
				emit(e, t->byte_tok[t->cp2byte[cp]]);
			i += l;
		}
	}
}

/* GPT-2 pre-tokenizer over a segment that holds no digits except single ones. */
static void pretok(struct enc *e, const uint8_t *s, size_t n)
{
	size_t i = 0, j, l, l2;
	uint32_t c, c2;
	enum cls k, k2;

	while (i < n && !e->err) {
		l = utf8_get(s + i, n - i, &c);
		k = classify(c);
		j = i + l;
		if (c == '\'' && j < n) {
			size_t rem = n - j;

			if (s[j] == 's' || s[j] == 't' || s[j] == 'm' || s[j] == 'd') {
				bpe_word(e, s + i, 2);
				i += 2;
				continue;
			}
			if (rem >= 2 &&
			    ((s[j] == 'r' && s[j + 1] == 'e') || (s[j] == 'v' && s[j + 1] == 'e') ||
			     (s[j] == 'l' && s[j + 1] == 'l'))) {
				bpe_word(e, s + i, 3);
				i += 3;
				continue;
			}
		}
		if (c == ' ' && j < n) {
			l2 = utf8_get(s + j, n - j, &c2);
			k2 = classify(c2);
			if (k2 != C_SPACE) {
				/* " ?X+" : the space joins the run of the next class */
				j += l2;
				while (j < n) {
					l2 = utf8_get(s + j, n - j, &c2);
					if (classify(c2) != k2 || k2 == C_DIGIT)
						break;
					j += l2;
				}
				bpe_word(e, s + i, j - i);
				i = j;
				continue;
			}
		}
		if (k == C_SPACE) {
			size_t last = i;

			while (j < n) {
				l2 = utf8_get(s + j, n - j, &c2);
				if (classify(c2) != C_SPACE)
					break;
				last = j;
				j += l2;
			}
			if (j < n && last > i) {
				/* \s+(?!\S): leave the last space for the next token */
				bpe_word(e, s + i, last - i);
				i = last;
				continue;
			}
			bpe_word(e, s + i, j - i);
			i = j;
			continue;
		}
		while (j < n && k != C_DIGIT) {
			l2 = utf8_get(s + j, n - j, &c2);
			if (classify(c2) != k)
				break;
			j += l2;
		}
		bpe_word(e, s + i, j - i);
		i = j;
	}
}

/* Digits are split one by one first (the "smollm" pre-tokenizer), then GPT-2 rules. */
static void encode_plain(struct enc *e, const uint8_t *s, size_t n)
{
	size_t i = 0, seg = 0, l;
	uint32_t c;

	while (i < n) {
		l = utf8_get(s + i, n - i, &c);
		if (classify(c) == C_DIGIT) {
			if (i > seg)
				pretok(e, s + seg, i - seg);
			bpe_word(e, s + i, l);
			seg = i + l;
		}
		i += l;
	}
	if (n > seg)
		pretok(e, s + seg, n - seg);
}

static int bpe_encode(const struct tok *t, const char *text, size_t len, bool special, int32_t *out,
		      size_t cap)
{
	const uint8_t *s = (const uint8_t *)text;
	struct enc e = { .t = t, .out = out, .cap = cap };
	size_t i = 0, seg = 0;
	int k, hit;

	while (special && i < len) {
		hit = -1;
		if (s[i] == '<') {
			for (k = 0; k < t->nspecial; k++) {
				const struct gguf_str *ss = &t->str[t->special[k]];

				if (ss->len && ss->len <= len - i &&
				    !memcmp(s + i, ss->s, ss->len) &&
				    (hit < 0 || ss->len > t->str[hit].len))
					hit = t->special[k];
			}
		}
		if (hit < 0) {
			i++;
			continue;
		}
		if (i > seg)
			encode_plain(&e, s + seg, i - seg);
		emit(&e, hit);
		i += t->str[hit].len;
		seg = i;
	}
	if (len > seg)
		encode_plain(&e, s + seg, len - seg);
	free(e.buf);
	free(e.start);
	free(e.len);
	free(e.next);
	free(e.key);
	return e.err ? e.err : (int)e.n;
}

int tok_encode(const struct tok *t, const char *text, size_t len, bool special, int32_t *out,
	       size_t cap)
{
	return t->spm ? spm_encode(t, text, len, special, out, cap) :
			bpe_encode(t, text, len, special, out, cap);
}

int tok_decode(const struct tok *t, int32_t id, char *buf, size_t cap)
{
	const struct gguf_str *s;
	size_t i = 0, n = 0, l;
	uint32_t cp;

	if (id < 0 || id >= t->n)
		return -EINVAL;
	s = &t->str[id];
	if (t->spm)
		return spm_decode(t, id, buf, cap);
	if (t->type[id] == TOK_TYPE_CONTROL || t->type[id] == TOK_TYPE_USER) {
		if (s->len > cap)
			return -ENOSPC;
		memcpy(buf, s->s, s->len);
		return (int)s->len;
	}
	while (i < s->len) {
		l = utf8_get((const uint8_t *)s->s + i, s->len - i, &cp);
		if (n >= cap)
			return -ENOSPC;
		buf[n++] = (cp < 512 && t->cp2byte[cp] >= 0) ? (char)t->cp2byte[cp] : '?';
		i += l;
	}
	return (int)n;
}
