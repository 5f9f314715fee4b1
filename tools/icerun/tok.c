/* BPE tokenizer: hash tables over the GGUF vocabulary and merge list, GPT-2 pre-tokenizer. */
#include "tok.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TOK_TYPE_CONTROL 3
#define TOK_TYPE_USER 4

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
	int bos, eos;
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

int tok_encode(const struct tok *t, const char *text, size_t len, bool special, int32_t *out,
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

int tok_decode(const struct tok *t, int32_t id, char *buf, size_t cap)
{
	const struct gguf_str *s;
	size_t i = 0, n = 0, l;
	uint32_t cp;

	if (id < 0 || id >= t->n)
		return -EINVAL;
	s = &t->str[id];
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
