/*
 * Unit tests for the model runner's building blocks, without the model file: quantized matmul
 * (AVX-512 and C paths) against a double-precision reference, the vectorised softmax exp, the
 * thread pool, and the GGUF parser on valid, truncated and corrupt files.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "dtype.h"
#include "gguf.h"
#include "kquant.h"
#include "mm.h"
#include "pool.h"
#include "tok.h"

static uint32_t rng = 12345;

static uint32_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 17;
	rng ^= rng << 5;
	return rng;
}

static float frnd(void)
{
	return (float)(rnd() % 20001) / 10000.0f - 1.0f;
}

/* Random matrix of the given type; blocks are filled with random bytes and finite scales. */
static uint8_t *make_mat(uint32_t type, int rows, int cols, struct qmat *w)
{
	size_t rb = gguf_row_bytes(type, (uint64_t)cols), i;
	uint8_t *d = malloc(rb * rows);
	int r, b, nb = cols / 32;

	for (i = 0; i < rb * rows; i++)
		d[i] = (uint8_t)rnd();
	for (r = 0; r < rows; r++) {
		uint8_t *row = d + rb * r;
		uint16_t h;

		for (b = 0; b < nb; b++) {
			switch (type) {
			case GGUF_T_Q4_1:
				h = dtype_f32_to_f16(frnd() * 0.1f);
				memcpy(row + b * 20, &h, 2);
				h = dtype_f32_to_f16(frnd() * 0.5f);
				memcpy(row + b * 20 + 2, &h, 2);
				break;
			case GGUF_T_Q8_0:
				h = dtype_f32_to_f16(frnd() * 0.01f);
				memcpy(row + b * 34, &h, 2);
				break;
			case GGUF_T_Q4_0:
				h = dtype_f32_to_f16(frnd() * 0.1f);
				memcpy(row + b * 18, &h, 2);
				break;
			case GGUF_T_Q5_0:
				h = dtype_f32_to_f16(frnd() * 0.1f);
				memcpy(row + b * 22, &h, 2);
				break;
			case GGUF_T_Q5_1:
				h = dtype_f32_to_f16(frnd() * 0.1f);
				memcpy(row + b * 24, &h, 2);
				h = dtype_f32_to_f16(frnd() * 0.5f);
				memcpy(row + b * 24 + 2, &h, 2);
				break;
			}
		}
		/* K-quants: super-blocks of 256 with f16 d (and dmin) */
		for (b = 0; b < cols / 256; b++) {
			size_t sb = type == GGUF_T_Q4_K ? 144 : type == GGUF_T_Q5_K ? 176 : 210;

			if (type == GGUF_T_Q6_K) {
				h = dtype_f32_to_f16(frnd() * 0.01f);
				memcpy(row + b * sb + 208, &h, 2);
			} else if (type == GGUF_T_Q4_K || type == GGUF_T_Q5_K) {
				h = dtype_f32_to_f16(frnd() * 0.01f);
				memcpy(row + b * sb, &h, 2);
				h = dtype_f32_to_f16(frnd() * 0.01f);
				memcpy(row + b * sb + 2, &h, 2);
			}
		}
		if (type == GGUF_T_F32)
			for (i = 0; i < (size_t)cols; i++) {
				float f = frnd();

				memcpy(row + 4 * i, &f, 4);
			}
		if (type == GGUF_T_F16)
			for (i = 0; i < (size_t)cols; i++) {
				h = dtype_f32_to_f16(frnd());
				memcpy(row + 2 * i, &h, 2);
			}
	}
	w->type = type;
	w->rows = rows;
	w->cols = cols;
	w->row_bytes = rb;
	w->data = d;
	return d;
}

static void check_matmul(uint32_t type, int rows, int cols, int n, int scalar, struct pool *p)
{
	struct qmat w;
	uint8_t *d = make_mat(type, rows, cols, &w);
	float *x = malloc(sizeof(float) * n * cols), *y = malloc(sizeof(float) * n * (rows + 3));
	float *yr = malloc(sizeof(float) * n * (rows + 3));
	int i, t;

	for (i = 0; i < n * cols; i++)
		x[i] = frnd();
	mm_force_scalar(scalar);
	ck_assert_int_eq(mm_matmul(&w, x, n, y, rows + 3, p), 0);
	mm_force_scalar(0);
	mm_matmul_ref(&w, x, n, yr, rows + 3);
	for (t = 0; t < n; t++)
		for (i = 0; i < rows; i++) {
			float a = y[t * (rows + 3) + i], b = yr[t * (rows + 3) + i];

			ck_assert_msg(fabsf(a - b) <= 1e-4f * (1 + fabsf(b)),
				      "type %u n %d row %d tok %d: %g vs %g (scalar %d)", type, n,
				      i, t, a, b, scalar);
		}
	free(x);
	free(y);
	free(yr);
	free(d);
}

START_TEST(test_matmul_types)
{
	static const uint32_t types[] = { GGUF_T_Q4_1, GGUF_T_Q8_0, GGUF_T_Q4_0, GGUF_T_F16,
					  GGUF_T_F32 };
	static const int ns[] = { 1, 2, 3, 4, 5, 9, 17 };
	struct pool *p;
	size_t i, j;

	ck_assert_int_eq(pool_new(2, &p), 0);
	for (i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		for (j = 0; j < sizeof(ns) / sizeof(ns[0]); j++) {
			/* rows not a multiple of the 16-row tile, cols a multiple of 32 */
			check_matmul(types[i], 37, 96, ns[j], 0, p);
			check_matmul(types[i], 37, 96, ns[j], 1, p);
		}
	pool_free(p);
}
END_TEST

/* The K-quants and Q5: 512 columns (two super-blocks), the C and the AVX-512 path. */
START_TEST(test_matmul_kquant)
{
	static const uint32_t types[] = { GGUF_T_Q5_0, GGUF_T_Q5_1, GGUF_T_Q4_K, GGUF_T_Q5_K,
					  GGUF_T_Q6_K };
	static const int ns[] = { 1, 3, 4, 9 };
	struct pool *p;
	size_t i, j;

	ck_assert_int_eq(pool_new(2, &p), 0);
	for (i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		for (j = 0; j < sizeof(ns) / sizeof(ns[0]); j++) {
			check_matmul(types[i], 37, 512, ns[j], 0, p);
			check_matmul(types[i], 37, 512, ns[j], 1, p);
		}
	pool_free(p);
}
END_TEST

/* The AVX-512 dequantisation gives the C one's values (fused multiply-subtract: 1 ulp). */
START_TEST(test_kquant_simd_equals_c)
{
	static const uint32_t types[] = { GGUF_T_Q5_0, GGUF_T_Q5_1, GGUF_T_Q4_K, GGUF_T_Q5_K,
					  GGUF_T_Q6_K };
	float a[512], b[512];
	size_t i;
	int r, k;

	for (i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		struct qmat w;
		uint8_t *d = make_mat(types[i], 8, 512, &w);

		ck_assert(kq_supported(types[i]));
		for (r = 0; r < 8; r++) {
			mm_force_scalar(1);
			ck_assert_int_eq(kq_dequant_row(w.type, d + r * w.row_bytes, 512, a), 0);
			mm_force_scalar(0);
			ck_assert_int_eq(kq_dequant_row(w.type, d + r * w.row_bytes, 512, b), 0);
			for (k = 0; k < 512; k++)
				ck_assert_msg(fabsf(a[k] - b[k]) <= 1e-6f * (1 + fabsf(a[k])),
					      "type %u row %d elt %d: %g vs %g", types[i], r, k,
					      a[k], b[k]);
		}
		free(d);
	}
	ck_assert_int_eq(kq_dequant_row(GGUF_T_F16, NULL, 32, a), -EOPNOTSUPP);
}
END_TEST

/* Q5_0: element j's fifth bit is bit j of qh; values are centred on 16. */
START_TEST(test_dequant_q5_0_layout)
{
	uint8_t blk[22] = { 0 };
	uint16_t d = dtype_f32_to_f16(0.5f);
	uint32_t qh = 0xA5A5F00Fu;
	float out[32];
	int j;

	memcpy(blk, &d, 2);
	memcpy(blk + 2, &qh, 4);
	for (j = 0; j < 16; j++)
		blk[6 + j] = (uint8_t)(j | ((15 - j) << 4));
	for (int simd = 0; simd < 2; simd++) {
		mm_force_scalar(!simd);
		ck_assert_int_eq(kq_dequant_row(GGUF_T_Q5_0, blk, 32, out), 0);
		for (j = 0; j < 16; j++) {
			int lo = j + 16 * (int)((qh >> j) & 1) - 16;
			int hi = 15 - j + 16 * (int)((qh >> (j + 16)) & 1) - 16;

			ck_assert_float_eq(out[j], 0.5f * (float)lo);
			ck_assert_float_eq(out[j + 16], 0.5f * (float)hi);
		}
	}
	mm_force_scalar(0);
}
END_TEST

START_TEST(test_dequant_q4_1_layout)
{
	/* one block: d = 2, m = -1, byte j holds element j (low nibble) and j + 16 (high) */
	uint8_t blk[20] = { 0 };
	struct qmat w = { GGUF_T_Q4_1, 1, 32, 20, blk };
	float out[32];
	uint16_t d = dtype_f32_to_f16(2.0f), m = dtype_f32_to_f16(-1.0f);
	int j;

	memcpy(blk, &d, 2);
	memcpy(blk + 2, &m, 2);
	for (j = 0; j < 16; j++)
		blk[4 + j] = (uint8_t)(j | ((15 - j) << 4));
	mm_dequant_row(&w, 0, out);
	for (j = 0; j < 16; j++) {
		ck_assert_float_eq(out[j], 2.0f * j - 1.0f);
		ck_assert_float_eq(out[j + 16], 2.0f * (15 - j) - 1.0f);
	}
}
END_TEST

START_TEST(test_softmax_exp)
{
	float x[37], y[37];
	double s = 0, got;
	int i, k;

	for (k = 0; k < 2; k++) {
		for (i = 0; i < 37; i++)
			x[i] = y[i] = frnd() * 30;
		mm_force_scalar(k);
		got = mm_softmax_exp(x, 37, 30);
		mm_force_scalar(0);
		s = 0;
		for (i = 0; i < 37; i++) {
			double e = exp((double)y[i] - 30);

			s += e;
			/* float arguments down to -60: a few ulps of the argument, ~1e-5 relative */
			ck_assert_msg(fabs(x[i] - e) <= 1e-5 * e + 1e-30, "%d: %g vs %g", i, x[i],
				      e);
		}
		ck_assert(fabs(got - s) <= 1e-5 * s);
	}
}
END_TEST

static void add_task(void *arg, int task, int thread)
{
	int *hits = arg;

	(void)thread;
	__atomic_fetch_add(&hits[task], 1, __ATOMIC_RELAXED);
}

START_TEST(test_pool)
{
	struct pool *p;
	int hits[1000] = { 0 }, i, r;

	ck_assert_int_eq(pool_new(0, &p), -EINVAL);
	ck_assert_int_eq(pool_new(3, &p), 0);
	for (r = 0; r < 10; r++)
		pool_run(p, add_task, hits, 1000);
	for (i = 0; i < 1000; i++)
		ck_assert_int_eq(hits[i], 10);
	pool_free(p);
	pool_free(NULL);
}
END_TEST

/* ---- GGUF files ---- */

struct buf {
	uint8_t b[4096];
	size_t n;
};

static void put(struct buf *b, const void *p, size_t n)
{
	memcpy(b->b + b->n, p, n);
	b->n += n;
}

static void put_u32(struct buf *b, uint32_t v)
{
	put(b, &v, 4);
}
static void put_u64(struct buf *b, uint64_t v)
{
	put(b, &v, 8);
}
static void put_str(struct buf *b, const char *s)
{
	put_u64(b, strlen(s));
	put(b, s, strlen(s));
}

/* header, 3 keys (u32, f32, string array), one 32×2 F32 tensor */
static void make_gguf(struct buf *b)
{
	float f = 0.5f, data[64];
	int i;

	memset(b, 0, sizeof(*b));
	put_u32(b, 0x46554747u);
	put_u32(b, 3);
	put_u64(b, 1); /* tensors */
	put_u64(b, 3); /* kv */
	put_str(b, "a.count");
	put_u32(b, GGUF_U32);
	put_u32(b, 30);
	put_str(b, "a.eps");
	put_u32(b, GGUF_F32);
	put(b, &f, 4);
	put_str(b, "a.words");
	put_u32(b, GGUF_ARR);
	put_u32(b, GGUF_STR);
	put_u64(b, 2);
	put_str(b, "hello");
	put_str(b, "world!");
	put_str(b, "t.weight");
	put_u32(b, 2);
	put_u64(b, 32);
	put_u64(b, 2);
	put_u32(b, GGUF_T_F32);
	put_u64(b, 0);
	while (b->n % 32)
		b->b[b->n++] = 0;
	for (i = 0; i < 64; i++)
		data[i] = (float)i;
	put(b, data, sizeof(data));
}

static int open_bytes(const uint8_t *p, size_t n, struct gguf **ret)
{
	char path[] = "/tmp/icerun-test-XXXXXX";
	int fd = mkstemp(path), err;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(write(fd, p, n), (ssize_t)n);
	close(fd);
	err = gguf_open(path, ret);
	unlink(path);
	return err;
}

START_TEST(test_gguf_valid)
{
	struct buf b;
	struct gguf *g;
	struct gguf_str s;
	const struct gguf_tensor *t;
	uint32_t u;
	float f;

	make_gguf(&b);
	ck_assert_int_eq(open_bytes(b.b, b.n, &g), 0);
	ck_assert_int_eq(gguf_get_u32(g, "a.count", &u), 0);
	ck_assert_uint_eq(u, 30);
	ck_assert_int_eq(gguf_get_f32(g, "a.eps", &f), 0);
	ck_assert_float_eq(f, 0.5f);
	ck_assert_int_eq(gguf_get_u32(g, "a.eps", &u), -EINVAL);
	ck_assert_int_eq(gguf_get_u32(g, "nope", &u), -ENOENT);
	ck_assert_int_eq(gguf_arr_str(gguf_find(g, "a.words"), 1, &s), 0);
	ck_assert_int_eq((int)s.len, 6);
	ck_assert(!memcmp(s.s, "world!", 6));
	ck_assert_int_eq(gguf_arr_str(gguf_find(g, "a.words"), 2, &s), -EINVAL);
	t = gguf_tensor(g, "t.weight");
	ck_assert_ptr_nonnull(t);
	ck_assert_int_eq((int)t->ne[0], 32);
	ck_assert_int_eq((int)t->ne[1], 2);
	ck_assert_float_eq(((const float *)t->data)[63], 63.0f);
	gguf_close(g);
}
END_TEST

START_TEST(test_gguf_corrupt)
{
	struct buf b, c;
	struct gguf *g;
	size_t cut, i;
	int err;

	make_gguf(&b);
	/* every truncation fails cleanly */
	for (cut = 0; cut < b.n; cut++) {
		err = open_bytes(b.b, cut, &g);
		ck_assert_msg(err < 0, "truncated at %zu accepted", cut);
	}
	/* bad magic, bad version */
	c = b;
	c.b[0] = 'X';
	ck_assert_int_eq(open_bytes(c.b, c.n, &g), -EINVAL);
	c = b;
	c.b[4] = 9;
	ck_assert_int_eq(open_bytes(c.b, c.n, &g), -EPROTONOSUPPORT);
	/* random byte flips: never a crash; either an error or a parse */
	for (i = 0; i < 300; i++) {
		c = b;
		c.b[rnd() % c.n] ^= (uint8_t)(1u << (rnd() % 8));
		c.b[rnd() % c.n] = (uint8_t)rnd();
		if (open_bytes(c.b, c.n, &g) == 0)
			gguf_close(g);
	}
	gguf_close(NULL);
}
END_TEST

/*
 * A SentencePiece vocabulary small enough to follow by hand: scores decide the merge order,
 * "aa" ties with itself in "aaa" (leftmost wins), 'A' and 'é' exist only as byte pieces,
 * "\n\n" is user-defined, "<go>" a control piece.
 */
static void make_spm_gguf(struct buf *b)
{
	static const char *const toks[] = { "<unk>",
					    "<s>",
					    "</s>",
					    "<0x41>",
					    "<0xC3>",
					    "<0xA9>",
					    "\xE2\x96\x81",
					    "a",
					    "b",
					    "ab",
					    "\xE2\x96\x81"
					    "a",
					    "\xE2\x96\x81"
					    "ab",
					    "\n\n",
					    "<go>",
					    "aa" };
	static const float scores[] = { 0, 0, 0, 0, 0, 0, -1, -2, -3, -5, -4, -6, 0, 0, -2.5f };
	static const int32_t types[] = { 2, 3, 3, 6, 6, 6, 1, 1, 1, 1, 1, 1, 4, 3, 1 };
	uint64_t i, n = sizeof(toks) / sizeof(toks[0]);

	memset(b, 0, sizeof(*b));
	put_u32(b, 0x46554747u);
	put_u32(b, 3);
	put_u64(b, 0); /* tensors */
	put_u64(b, 8); /* kv */
	put_str(b, "tokenizer.ggml.model");
	put_u32(b, GGUF_STR);
	put_str(b, "llama");
	put_str(b, "tokenizer.ggml.tokens");
	put_u32(b, GGUF_ARR);
	put_u32(b, GGUF_STR);
	put_u64(b, n);
	for (i = 0; i < n; i++)
		put_str(b, toks[i]);
	put_str(b, "tokenizer.ggml.scores");
	put_u32(b, GGUF_ARR);
	put_u32(b, GGUF_F32);
	put_u64(b, n);
	put(b, scores, sizeof(scores));
	put_str(b, "tokenizer.ggml.token_type");
	put_u32(b, GGUF_ARR);
	put_u32(b, GGUF_I32);
	put_u64(b, n);
	put(b, types, sizeof(types));
	put_str(b, "tokenizer.ggml.bos_token_id");
	put_u32(b, GGUF_U32);
	put_u32(b, 1);
	put_str(b, "tokenizer.ggml.unknown_token_id");
	put_u32(b, GGUF_U32);
	put_u32(b, 0);
	put_str(b, "tokenizer.ggml.add_bos_token");
	put_u32(b, GGUF_BOOL);
	b->b[b->n++] = 1;
	put_str(b, "tokenizer.ggml.add_space_prefix");
	put_u32(b, GGUF_BOOL);
	b->b[b->n++] = 0;
	while (b->n % 32)
		b->b[b->n++] = 0;
}

static void check_encode(const struct tok *t, const char *text, bool special, const int32_t *want,
			 int nwant)
{
	int32_t got[32];
	int n = tok_encode(t, text, strlen(text), special, got, 32), i;

	ck_assert_msg(n == nwant, "'%s': %d tokens, want %d", text, n, nwant);
	for (i = 0; i < n; i++)
		ck_assert_msg(got[i] == want[i], "'%s': token %d is %d, want %d", text, i, got[i],
			      want[i]);
}

START_TEST(test_spm_tokenizer)
{
	struct buf b;
	struct gguf *g;
	struct tok *t;
	char out[16];

	make_spm_gguf(&b);
	ck_assert_int_eq(open_bytes(b.b, b.n, &g), 0);
	ck_assert_int_eq(tok_new(g, &t), 0);
	ck_assert_int_eq(tok_vocab_size(t), 15);
	ck_assert(tok_add_bos(t));
	ck_assert_int_eq(tok_bos(t), 1);
	check_encode(t, "ab", false, (const int32_t[]){ 9 }, 1);
	/* "\u2581a" (-4) merges before "ab" (-5), then "\u2581ab" (-6) */
	check_encode(t, " ab", false, (const int32_t[]){ 11 }, 1);
	check_encode(t, "b a", false, (const int32_t[]){ 8, 10 }, 2);
	/* equal scores: the leftmost pair first */
	check_encode(t, "aaa", false, (const int32_t[]){ 14, 7 }, 2);
	/* byte fallback, and <unk> for a byte without a piece */
	check_encode(t, "A\xC3\xA9", false, (const int32_t[]){ 3, 4, 5 }, 3);
	check_encode(t, "z", false, (const int32_t[]){ 0 }, 1);
	/* user-defined pieces always, control pieces only when asked */
	check_encode(t, "a\n\nb", false, (const int32_t[]){ 7, 12, 8 }, 3);
	check_encode(t, "<go>a", true, (const int32_t[]){ 13, 7 }, 2);
	check_encode(t, "", false, NULL, 0);
	ck_assert_int_eq(tok_encode(t, "<go>", 4, false, (int32_t[8]){ 0 }, 8), 4);
	ck_assert_int_eq(tok_encode(t, "b a", 3, false, (int32_t[1]){ 0 }, 1), -ENOSPC);
	ck_assert_int_eq(tok_decode(t, 10, out, sizeof(out)), 2);
	ck_assert(!memcmp(out, " a", 2));
	ck_assert_int_eq(tok_decode(t, 3, out, sizeof(out)), 1);
	ck_assert_int_eq(out[0], 'A');
	ck_assert_int_eq(tok_decode(t, 15, out, sizeof(out)), -EINVAL);
	tok_free(t);
	gguf_close(g);
}
END_TEST

static Suite *icerun_suite(void)
{
	Suite *s = suite_create("icerun");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_matmul_types);
	tcase_add_test(tc, test_dequant_q4_1_layout);
	tcase_add_test(tc, test_matmul_kquant);
	tcase_add_test(tc, test_kquant_simd_equals_c);
	tcase_add_test(tc, test_dequant_q5_0_layout);
	tcase_add_test(tc, test_softmax_exp);
	tcase_add_test(tc, test_pool);
	tcase_add_test(tc, test_gguf_valid);
	tcase_add_test(tc, test_gguf_corrupt);
	tcase_add_test(tc, test_spm_tokenizer);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	Suite *suites[] = { icerun_suite(), NULL };

	return check_run_suites(suites);
}
