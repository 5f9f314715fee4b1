/* Unit tests for runtime/common: the latency histogram, the stats lines, the dtype
 * conversions (against plain references built from ldexp and a search for the nearest value)
 * and buf_grow. */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "check_main.h"
#include "dtype.h"
#include "hist.h"
#include "stats.h"

#ifdef __SANITIZE_ADDRESS__
/* buf_grow's -ENOMEM test asks for more than any allocator gives; ASan would abort instead of
 * returning NULL. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "allocator_may_return_null=1";
}
#endif

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* Quantiles land within one bucket (12.5%) above the exact order statistic. */
START_TEST(hist_quantiles_match_sorted_reference)
{
	enum { N = 20000 };
	static uint64_t v[N];
	static struct hist h;
	const double qs[] = { 0.0, 0.1, 0.5, 0.9, 0.99, 0.999 };
	unsigned i;

	srand(1234 + (unsigned)_i);
	hist_init(&h);
	for (i = 0; i < N; i++) {
		v[i] = (uint64_t)rand() % 5000000u + (i % 7 == 0 ? 100000000u : 0);
		hist_add(&h, v[i]);
	}
	qsort(v, N, sizeof(v[0]), cmp_u64);
	ck_assert_uint_eq(h.count, N);
	ck_assert_uint_eq(h.max, v[N - 1]);
	for (i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
		uint64_t exact = v[(size_t)(qs[i] * N)], got = hist_quantile(&h, qs[i]);

		ck_assert_uint_ge(got, exact);
		ck_assert_uint_le(got, exact + exact / 8 + 1);
	}
	ck_assert_uint_eq(hist_quantile(&h, 1.0), v[N - 1]);
}
END_TEST

START_TEST(hist_small_values_are_exact)
{
	struct hist h;
	uint64_t i;

	hist_init(&h);
	ck_assert_uint_eq(hist_quantile(&h, 0.5), 0);
	for (i = 0; i < 8; i++)
		hist_add(&h, i);
	ck_assert_uint_eq(hist_quantile(&h, 0.5), 4);
	ck_assert_uint_eq(hist_quantile(&h, 0.0), 0);
}
END_TEST

START_TEST(stats_lines_round_trip_and_overflow)
{
	char buf[256], tiny[40];
	struct stats_buf sb;
	struct hist h;
	uint64_t v;

	stats_buf_init(&sb, buf, sizeof(buf));
	stats_put_u64(&sb, "tier.dram", "used_bytes", 1048576);
	stats_put_u64(&sb, NULL, "clients", 2);
	hist_init(&h);
	hist_add(&h, 1000);
	stats_put_hist(&sb, "ring", "rtt", &h);
	ck_assert_int_eq(sb.err, 0);
	ck_assert_int_eq(stats_find_u64(buf, "tier.dram.used_bytes", &v), 0);
	ck_assert_uint_eq(v, 1048576);
	ck_assert_int_eq(stats_find_u64(buf, "clients", &v), 0);
	ck_assert_uint_eq(v, 2);
	ck_assert_int_eq(stats_find_u64(buf, "ring.rtt.count", &v), 0);
	ck_assert_uint_eq(v, 1);
	ck_assert_int_eq(stats_find_u64(buf, "tier.dram.used", &v), -ENOENT);

	/* Overflow keeps only whole lines and reports -ENOSPC. */
	stats_buf_init(&sb, tiny, sizeof(tiny));
	stats_put_u64(&sb, "a", "b", 1);
	stats_put_u64(&sb, "tier.dram", "capacity_bytes", 123456789);
	ck_assert_int_eq(sb.err, -ENOSPC);
	ck_assert_str_eq(tiny, "a.b 1\n");
}
END_TEST

static int keep_b(void *arg, const char *line, size_t len)
{
	++*(int *)arg;
	return len >= 2 && line[0] == 'b' && line[len] == '\0';
}

START_TEST(stats_keep_drops_lines_without_taking_room)
{
	char tiny[16];
	struct stats_buf sb;
	int asked = 0;

	/* Dropped lines take no room: a long one that would not fit is simply not there. */
	stats_buf_init(&sb, tiny, sizeof(tiny));
	sb.keep = keep_b;
	sb.keep_arg = &asked;
	stats_put_u64(&sb, "a", "long_name_that_does_not_fit", 1);
	stats_put_u64(&sb, "b", "x", 2);
	stats_put_str(&sb, "a", "y", "z");
	stats_put_u64(&sb, "b", "y", 3);
	ck_assert_int_eq(asked, 4);
	ck_assert_int_eq(sb.err, 0);
	ck_assert_str_eq(tiny, "b.x 2\nb.y 3\n");
	/* A kept line that does not fit is -ENOSPC as ever. */
	stats_put_u64(&sb, "b", "zz", 4);
	ck_assert_int_eq(sb.err, -ENOSPC);
	ck_assert_str_eq(tiny, "b.x 2\nb.y 3\n");
}
END_TEST

/* ---- dtype ------------------------------------------------------------------------------- */

/* Check records every assertion that passes; in loops of a million only a failure may cost. */
#define MUST(cond, ...)                            \
	do {                                       \
		if (!(cond))                       \
			ck_abort_msg(__VA_ARGS__); \
	} while (0)

static uint32_t bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static float from_bits(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

static uint64_t rnd(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* IEEE binary16 by its definition: NaN for an all-ones exponent with a mantissa. */
static double ref_f16(uint16_t h)
{
	int sign = h >> 15, exp = (h >> 10) & 31, man = h & 1023;
	double v;

	if (exp == 31)
		v = man ? NAN : INFINITY;
	else if (exp == 0)
		v = ldexp(man, -24);
	else
		v = ldexp(1024 + man, exp - 25);
	return sign ? -v : v;
}

/* bfloat16: float's exponent, 7 mantissa bits. */
static double ref_bf16(uint16_t h)
{
	int sign = h >> 15, exp = (h >> 7) & 255, man = h & 127;
	double v;

	if (exp == 255)
		v = man ? NAN : INFINITY;
	else if (exp == 0)
		v = ldexp(man, -133);
	else
		v = ldexp(128 + man, exp - 134);
	return sign ? -v : v;
}

/*
 * Round to nearest, ties to even, by search: the two neighbours of |f| among the finite
 * positive codes (ordered like their values), the value past the largest one standing for
 * infinity as IEEE rounds with an unbounded exponent.
 */
static uint16_t ref_round(float f, double (*val)(uint16_t), uint16_t maxfin, double past_max)
{
	double a = fabs((double)f), lo_v, hi_v;
	uint16_t sign = (uint16_t)(bits(f) >> 16 & 0x8000u), lo = 0, hi = maxfin, r;

	while (lo < hi) { /* largest code with value <= a */
		uint16_t mid = (uint16_t)((lo + hi + 1) / 2);

		if (val(mid) <= a)
			lo = mid;
		else
			hi = (uint16_t)(mid - 1);
	}
	lo_v = val(lo);
	hi_v = lo == maxfin ? past_max : val((uint16_t)(lo + 1));
	if (a - lo_v < hi_v - a || (a - lo_v == hi_v - a && !(lo & 1)))
		r = lo;
	else
		r = (uint16_t)(lo + 1); /* maxfin + 1 is infinity in both formats */
	return (uint16_t)(sign | r);
}

static uint16_t ref_to_f16(float f)
{
	return ref_round(f, ref_f16, 0x7bff, 65536.0);
}

static uint16_t ref_to_bf16(float f)
{
	return ref_round(f, ref_bf16, 0x7f7f, ldexp(1, 128));
}

/* Every one of the 65536 codes decodes to its value (NaNs to a NaN of the same sign and
 * payload), and encodes back to itself; NaNs come back quiet with their sign (fp16: the one
 * quiet NaN 0x7e00, bf16: the payload kept and the quiet bit set). */
START_TEST(dtype_every_half_decodes_and_round_trips)
{
	uint32_t u;

	for (u = 0; u < 65536; u++) {
		uint16_t h = (uint16_t)u;
		float f = dtype_f16_to_f32(h), b = dtype_bf16_to_f32(h);
		double rf = ref_f16(h), rb = ref_bf16(h);

		MUST(bits(f) >> 31 == u >> 15 && bits(b) >> 31 == u >> 15, "%04x: sign lost", u);
		if (isnan(rf)) {
			MUST(isnan(f) && (bits(f) & 0x7fffffu) == (u & 0x3ffu) << 13,
			     "f16 %04x: %08x is not its NaN", u, bits(f));
			MUST(dtype_f32_to_f16(f) == ((h & 0x8000u) | 0x7e00u),
			     "f16 %04x: back %04x", u, dtype_f32_to_f16(f));
		} else {
			MUST((double)f == rf, "f16 %04x: %a want %a", u, (double)f, rf);
			MUST(dtype_f32_to_f16(f) == h, "f16 %04x: back %04x", u,
			     dtype_f32_to_f16(f));
		}
		if (isnan(rb)) {
			MUST(bits(b) == u << 16, "bf16 %04x: %08x is not its NaN", u, bits(b));
			MUST(dtype_f32_to_bf16(b) == (h | 0x40u), "bf16 %04x: back %04x", u,
			     dtype_f32_to_bf16(b));
		} else {
			MUST((double)b == rb, "bf16 %04x: %a want %a", u, (double)b, rb);
			MUST(dtype_f32_to_bf16(b) == h, "bf16 %04x: back %04x", u,
			     dtype_f32_to_bf16(b));
		}
	}
}
END_TEST

/* Rounding to fp16: the value of every code, the exact midpoint to the next (a tie) and the
 * floats either side of it, then random floats over the whole range. */
START_TEST(dtype_f16_rounds_to_nearest_even)
{
	uint64_t s = 11;
	uint32_t u, i;

	for (u = 0; u < 0x7c00; u++) {
		double v = ref_f16((uint16_t)u);
		double next = u == 0x7bff ? 65536.0 : ref_f16((uint16_t)(u + 1));
		float m = (float)((v + next) / 2); /* exact: 12 significant bits */
		float t[5] = { from_bits(bits(m) - 1), m, from_bits(bits(m) + 1), (float)v, -m };

		MUST((double)m == (v + next) / 2, "midpoint above %04x not exact", u);
		for (i = 0; i < 5; i++)
			MUST(dtype_f32_to_f16(t[i]) == ref_to_f16(t[i]), "f=%a got %04x want %04x",
			     (double)t[i], dtype_f32_to_f16(t[i]), ref_to_f16(t[i]));
	}
	for (i = 0; i < 1000000; i++) {
		uint32_t b = (uint32_t)rnd(&s);
		float f;

		if (i % 2) /* half the draws in fp16's exponent range, subnormals included */
			b = (b & 0x807fffffu) | ((uint32_t)(96 + (b >> 23) % 48) << 23);
		f = from_bits(b);
		if (isnan(f))
			continue;
		MUST(dtype_f32_to_f16(f) == ref_to_f16(f), "f=%a got %04x want %04x", (double)f,
		     dtype_f32_to_f16(f), ref_to_f16(f));
	}
}
END_TEST

/* fp16 rounding also matches the compiler's own _Float16 conversion. */
START_TEST(dtype_f16_matches_compiler)
{
	uint64_t s = 42;
	int i;

	for (i = 0; i < 200000; i++) {
		uint32_t b = (uint32_t)rnd(&s);
		_Float16 ref;
		uint16_t rb;
		float f;

		if (i % 2)
			b = (b & 0x807fffffu) | ((uint32_t)(96 + (b >> 23) % 48) << 23);
		f = from_bits(b);
		if (isnan(f))
			continue;
		ref = (_Float16)f;
		memcpy(&rb, &ref, sizeof(rb));
		MUST(dtype_f32_to_f16(f) == rb, "f=%a got %04x want %04x", (double)f,
		     dtype_f32_to_f16(f), rb);
	}
}
END_TEST

/* Rounding to bf16: exact ties (low 16 bits 0x8000), their neighbours, random floats. */
START_TEST(dtype_bf16_rounds_to_nearest_even)
{
	uint64_t s = 7;
	int i;

	for (i = 0; i < 1000000; i++) {
		uint32_t b = (uint32_t)rnd(&s);
		float f;

		if (i % 4 == 1)
			b = (b & 0xffff0000u) | 0x8000u;
		else if (i % 4 == 2)
			b = (b & 0xffff0000u) | (i & 8 ? 0x8001u : 0x7fffu);
		f = from_bits(b);
		if (isnan(f))
			continue;
		MUST(dtype_f32_to_bf16(f) == ref_to_bf16(f), "f=%a got %04x want %04x", (double)f,
		     dtype_f32_to_bf16(f), ref_to_bf16(f));
	}
}
END_TEST

START_TEST(dtype_special_values)
{
	const uint32_t nans[] = { 0x7fc00000u, 0xffc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu };
	unsigned i;

	for (i = 0; i < sizeof(nans) / sizeof(nans[0]); i++) {
		float f = from_bits(nans[i]);

		/* a NaN whose payload sits below the kept bits must not become infinity */
		ck_assert(isnan(dtype_f16_to_f32(dtype_f32_to_f16(f))));
		ck_assert(isnan(dtype_bf16_to_f32(dtype_f32_to_bf16(f))));
		ck_assert_uint_eq(dtype_f32_to_f16(f) >> 15, nans[i] >> 31);
		ck_assert_uint_eq(dtype_f32_to_bf16(f) >> 15, nans[i] >> 31);
	}
	ck_assert_uint_eq(dtype_f32_to_f16(INFINITY), 0x7c00);
	ck_assert_uint_eq(dtype_f32_to_f16(-INFINITY), 0xfc00);
	ck_assert_uint_eq(dtype_f32_to_bf16(INFINITY), 0x7f80);
	ck_assert_uint_eq(dtype_f32_to_bf16(-INFINITY), 0xff80);
	/* overflow: 65520 is the tie between 65504 and (unbounded) 65536, and goes to infinity */
	ck_assert_uint_eq(dtype_f32_to_f16(65504.0f), 0x7bff);
	ck_assert_uint_eq(dtype_f32_to_f16(from_bits(bits(65520.0f) - 1)), 0x7bff);
	ck_assert_uint_eq(dtype_f32_to_f16(65520.0f), 0x7c00);
	ck_assert_uint_eq(dtype_f32_to_f16(-1e6f), 0xfc00);
	ck_assert_uint_eq(dtype_f32_to_f16(FLT_MAX), 0x7c00);
	ck_assert_uint_eq(dtype_f32_to_bf16(FLT_MAX), 0x7f80);
	ck_assert_uint_eq(dtype_f32_to_bf16(-FLT_MAX), 0xff80);
	ck_assert_uint_eq(dtype_f32_to_bf16(from_bits(0x7f7f7fffu)), 0x7f7f);
	/* zeros keep their sign */
	ck_assert_uint_eq(dtype_f32_to_f16(-0.0f), 0x8000);
	ck_assert_uint_eq(dtype_f32_to_bf16(-0.0f), 0x8000);
	ck_assert_uint_eq(bits(dtype_f16_to_f32(0x8000)), 0x80000000u);
	/* fp16 subnormals: 2^-24 is the smallest, 2^-25 the tie to zero (even), 3 * 2^-25 the tie
	 * between 1 and 2 units (even: 2) */
	ck_assert_uint_eq(dtype_f32_to_f16(ldexpf(1, -24)), 0x0001);
	ck_assert_uint_eq(dtype_f32_to_f16(ldexpf(1, -25)), 0x0000);
	ck_assert_uint_eq(dtype_f32_to_f16(from_bits(bits(ldexpf(1, -25)) + 1)), 0x0001);
	ck_assert_uint_eq(dtype_f32_to_f16(-ldexpf(3, -25)), 0x8002);
	ck_assert_uint_eq(dtype_f32_to_f16(ldexpf(1023, -24)), 0x03ff);
	ck_assert_uint_eq(dtype_f32_to_f16(ldexpf(2047, -25)), 0x0400); /* rounds up to normal */
	ck_assert(dtype_f16_to_f32(0x0001) == ldexpf(1, -24));
	ck_assert(dtype_f16_to_f32(0x83ff) == -ldexpf(1023, -24));
	/* float subnormals: to fp16 they are zero; bf16 keeps float's exponent range */
	ck_assert_uint_eq(dtype_f32_to_f16(from_bits(0x00400000u)), 0x0000);
	ck_assert_uint_eq(dtype_f32_to_bf16(from_bits(0x00400000u)), 0x0040);
	ck_assert_uint_eq(dtype_f32_to_bf16(from_bits(0x00000001u)), 0x0000);
	ck_assert_uint_eq(dtype_f32_to_bf16(from_bits(0x00008000u)), 0x0000); /* tie, even */
	ck_assert_uint_eq(dtype_f32_to_bf16(from_bits(0x00018000u)), 0x0002); /* tie, even */
	ck_assert(dtype_bf16_to_f32(0x0001) == ldexpf(1, -133));
}
END_TEST

START_TEST(dtype_sizes_names_and_rows)
{
	const float in[6] = { 1.0f, -2.5f, 65504.0f, 1e-8f, 3.14159f, -0.0f };
	float out[6];
	uint16_t h[6];
	unsigned i;
	int d;

	ck_assert_uint_eq(dtype_size(ICE_DTYPE_F32), 4);
	ck_assert_uint_eq(dtype_size(ICE_DTYPE_F16), 2);
	ck_assert_uint_eq(dtype_size(ICE_DTYPE_BF16), 2);
	ck_assert_uint_eq(dtype_size((enum ice_dtype)3), 0);
	ck_assert_str_eq(dtype_name(ICE_DTYPE_F32), "f32");
	ck_assert_str_eq(dtype_name(ICE_DTYPE_F16), "f16");
	ck_assert_str_eq(dtype_name(ICE_DTYPE_BF16), "bf16");
	ck_assert_str_eq(dtype_name((enum ice_dtype)9), "?");
	/* the public values, which the wire and the Python binding carry */
	ck_assert_int_eq(ICE_DTYPE_F32, 0);
	ck_assert_int_eq(ICE_DTYPE_F16, 1);
	ck_assert_int_eq(ICE_DTYPE_BF16, 2);

	for (d = ICE_DTYPE_F32; d <= ICE_DTYPE_BF16; d++) {
		enum ice_dtype dt = (enum ice_dtype)d;
		unsigned char row[6 * 4];

		for (i = 0; i < 6; i++)
			dtype_store_f32(row, dt, i, in[i]);
		ck_assert_int_eq(dtype_to_f32(row, dt, 6, out), 0);
		for (i = 0; i < 6; i++) {
			float want = in[i];

			if (dt == ICE_DTYPE_F16)
				want = dtype_f16_to_f32(dtype_f32_to_f16(in[i]));
			else if (dt == ICE_DTYPE_BF16)
				want = dtype_bf16_to_f32(dtype_f32_to_bf16(in[i]));
			ck_assert_uint_eq(bits(out[i]), bits(want));
			ck_assert_uint_eq(bits(dtype_load_f32(row, dt, i)), bits(want));
		}
	}
	ck_assert(isnan(dtype_load_f32(in, (enum ice_dtype)5, 0)));
	ck_assert_int_eq(dtype_to_f32(h, (enum ice_dtype)3, 6, out), -EINVAL);
	ck_assert_int_eq(dtype_to_f32(NULL, ICE_DTYPE_F16, 6, out), -EINVAL);
	ck_assert_int_eq(dtype_to_f32(h, ICE_DTYPE_F16, 6, NULL), -EINVAL);
	memset(h, 0xab, sizeof(h));
	dtype_store_f32(h, (enum ice_dtype)3, 0, 1.0f); /* an unknown dtype stores nothing */
	ck_assert_uint_eq(h[0], 0xabab);
}
END_TEST

/* Keys and queries must be finite: the checked conversion refuses NaN and infinities in any
 * dtype, wherever they sit, and converts finite rows as dtype_to_f32 does. */
START_TEST(dtype_finite_rows_refuse_nan_and_inf)
{
	const float bad[3] = { NAN, INFINITY, -INFINITY };
	float row[8], out[8], want[8];
	unsigned char buf[8 * 4];
	unsigned i, b, at;
	int d;

	for (d = ICE_DTYPE_F32; d <= ICE_DTYPE_BF16; d++) {
		enum ice_dtype dt = (enum ice_dtype)d;

		for (i = 0; i < 8; i++) {
			row[i] = (float)i - 3.5f;
			dtype_store_f32(buf, dt, i, row[i]);
		}
		ck_assert_int_eq(dtype_to_f32_finite(buf, dt, 8, out), 0);
		ck_assert_int_eq(dtype_to_f32(buf, dt, 8, want), 0);
		ck_assert_mem_eq(out, want, sizeof(out));
		for (b = 0; b < 3; b++)
			for (at = 0; at < 8; at += 7) {
				dtype_store_f32(buf, dt, at, bad[b]);
				ck_assert_int_eq(dtype_to_f32_finite(buf, dt, 8, out), -EINVAL);
				dtype_store_f32(buf, dt, at, row[at]);
			}
		ck_assert_int_eq(dtype_to_f32_finite(buf, (enum ice_dtype)7, 8, out), -EINVAL);
	}
}
END_TEST

/* ---- buf_grow ---------------------------------------------------------------------------- */

START_TEST(buf_grow_keeps_contents_and_doubles)
{
	uint16_t *b = NULL, *before;
	size_t cap = 0, i, grows = 0;

	ck_assert_int_eq(buf_grow(&b, &cap, 0, sizeof(*b)), 0);
	ck_assert_ptr_null(b);
	ck_assert_int_eq(buf_grow(&b, &cap, 5, sizeof(*b)), 0);
	ck_assert_ptr_nonnull(b);
	ck_assert_uint_eq(cap, 5); /* from nothing: what is asked */
	for (i = 0; i < 5; i++)
		b[i] = (uint16_t)(i * 3);
	/* big enough already: nothing moves */
	before = b;
	ck_assert_int_eq(buf_grow(&b, &cap, 5, sizeof(*b)), 0);
	ck_assert_int_eq(buf_grow(&b, &cap, 1, sizeof(*b)), 0);
	ck_assert_ptr_eq(b, before);
	ck_assert_uint_eq(cap, 5);
	/* one more element doubles */
	ck_assert_int_eq(buf_grow(&b, &cap, 6, sizeof(*b)), 0);
	ck_assert_uint_eq(cap, 10);
	/* more than double: exactly what is asked */
	ck_assert_int_eq(buf_grow(&b, &cap, 100, sizeof(*b)), 0);
	ck_assert_uint_eq(cap, 100);
	for (i = 0; i < 5; i++)
		ck_assert_uint_eq(b[i], i * 3);
	/* pushing one element at a time grows O(log n) times */
	for (i = 5; i < 100000; i++) {
		size_t old = cap;

		MUST(buf_grow(&b, &cap, i + 1, sizeof(*b)) == 0 && cap >= i + 1, "push %zu", i);
		grows += cap != old;
		b[i] = (uint16_t)(i * 3);
	}
	ck_assert_uint_le(grows, 11);
	for (i = 0; i < 100000; i++)
		MUST(b[i] == (uint16_t)(i * 3), "element %zu lost", i);
	free(b);
}
END_TEST

/* A request the allocator refuses, or whose size overflows, fails with -ENOMEM and leaves the
 * buffer as it was. */
START_TEST(buf_grow_failure_leaves_the_buffer)
{
	char *b = NULL, *before;
	size_t cap = 0, i;

	ck_assert_int_eq(buf_grow(&b, &cap, 64, 1), 0);
	memset(b, 'x', 64);
	before = b;
	ck_assert_int_eq(buf_grow(&b, &cap, SIZE_MAX / 2, 1), -ENOMEM);
	ck_assert_ptr_eq(b, before);
	ck_assert_uint_eq(cap, 64);
	ck_assert_int_eq(buf_grow(&b, &cap, SIZE_MAX / 2, 4), -ENOMEM); /* bytes overflow */
	ck_assert_int_eq(buf_grow(&b, &cap, SIZE_MAX, 1), -ENOMEM);
	ck_assert_ptr_eq(b, before);
	ck_assert_uint_eq(cap, 64);
	ck_assert_int_eq(buf_grow(&b, &cap, 65, 0), -EINVAL);
	for (i = 0; i < 64; i++)
		ck_assert_int_eq(b[i], 'x');
	/* still usable */
	ck_assert_int_eq(buf_grow(&b, &cap, 65, 1), 0);
	ck_assert_uint_eq(cap, 128);
	ck_assert_int_eq(b[63], 'x');
	free(b);
}
END_TEST

static Suite *common_suite(void)
{
	Suite *s = suite_create("common");
	TCase *tc = tcase_create("unit");

	tcase_add_loop_test(tc, hist_quantiles_match_sorted_reference, 0, 3);
	tcase_add_test(tc, hist_small_values_are_exact);
	tcase_add_test(tc, stats_lines_round_trip_and_overflow);
	tcase_add_test(tc, stats_keep_drops_lines_without_taking_room);
	tcase_add_test(tc, dtype_every_half_decodes_and_round_trips);
	tcase_add_test(tc, dtype_f16_rounds_to_nearest_even);
	tcase_add_test(tc, dtype_f16_matches_compiler);
	tcase_add_test(tc, dtype_bf16_rounds_to_nearest_even);
	tcase_add_test(tc, dtype_special_values);
	tcase_add_test(tc, dtype_sizes_names_and_rows);
	tcase_add_test(tc, dtype_finite_rows_refuse_nan_and_inf);
	tcase_add_test(tc, buf_grow_keeps_contents_and_doubles);
	tcase_add_test(tc, buf_grow_failure_leaves_the_buffer);
	tcase_set_timeout(tc, 60); /* the conversion sweeps take seconds under the sanitizers */
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	Suite *suites[] = { common_suite(), NULL };

	return check_run_suites(suites);
}
