#include "crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

/* Reflected polynomial 0x82F63B78; slicing-by-8 tables, built once (thread-safe init). */
static uint32_t crc_table[8][256];
static pthread_once_t crc_once_ctl = PTHREAD_ONCE_INIT;
static int crc_hw;

/* Block sizes of the interleaved hardware path and their zero-append operators (below). */
#define CRC_LONG 2048u
#define CRC_SHORT 256u
static uint32_t crc_long[4][256], crc_short[4][256];
static void crc_zeros_table(uint32_t tab[4][256], size_t len);

static void crc_init(void)
{
	uint32_t i, j, c;

	for (i = 0; i < 256; i++) {
		c = i;
		for (j = 0; j < 8; j++)
			c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
		crc_table[0][i] = c;
	}
	for (i = 0; i < 256; i++)
		for (j = 1; j < 8; j++)
			crc_table[j][i] = (crc_table[j - 1][i] >> 8) ^
					  crc_table[0][crc_table[j - 1][i] & 0xff];
	crc_zeros_table(crc_long, CRC_LONG);
	crc_zeros_table(crc_short, CRC_SHORT);
#if defined(__x86_64__)
	__builtin_cpu_init();
	crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

uint32_t crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	pthread_once(&crc_once_ctl, crc_init);
	crc = ~crc;
	while (len && ((uintptr_t)p & 7)) {
		crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
		len--;
	}
	while (len >= 8) {
		uint64_t v;

		memcpy(&v, p, 8);
		v ^= crc; /* little-endian: the low 4 bytes take the running crc */
		crc = crc_table[7][v & 0xff] ^ crc_table[6][(v >> 8) & 0xff] ^
		      crc_table[5][(v >> 16) & 0xff] ^ crc_table[4][(v >> 24) & 0xff] ^
		      crc_table[3][(v >> 32) & 0xff] ^ crc_table[2][(v >> 40) & 0xff] ^
		      crc_table[1][(v >> 48) & 0xff] ^ crc_table[0][v >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
	return ~crc;
}

/*
 * The crc32 instruction has a 3-cycle latency and issues every cycle, so one dependency chain
 * runs at a third of its speed. The hardware path runs three chains over three adjacent
 * blocks and joins them: the CRC register is linear, so the register after A||B is
 * shift_|B|(register after A) ^ (register of B started from 0), where shift_n appends n zero
 * bytes. shift_n for a fixed n is a 32x32 matrix over GF(2), applied here as four 256-entry
 * tables (one per byte of the register), built once.
 */
static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
	uint32_t sum = 0;

	while (vec) {
		if (vec & 1)
			sum ^= *mat;
		vec >>= 1;
		mat++;
	}
	return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat)
{
	int n;

	for (n = 0; n < 32; n++)
		square[n] = gf2_times(mat, mat[n]);
}

/* tab = the operator that appends len zero bytes (len a power of two). */
static void crc_zeros_table(uint32_t tab[4][256], size_t len)
{
	uint32_t odd[32], even[32], *op, row = 1;
	int n, k;

	odd[0] = 0x82F63B78u; /* one zero bit */
	for (n = 1; n < 32; n++) {
		odd[n] = row;
		row <<= 1;
	}
	gf2_square(even, odd); /* two bits */
	gf2_square(odd, even); /* four bits */
	op = odd;
	for (;;) {
		gf2_square(even, odd);
		op = even;
		len >>= 1;
		if (!len)
			break;
		gf2_square(odd, even);
		op = odd;
		len >>= 1;
		if (!len)
			break;
	}
	for (k = 0; k < 4; k++)
		for (n = 0; n < 256; n++)
			tab[k][n] = gf2_times(op, (uint32_t)n << (8 * k));
}

static uint32_t crc_shift(uint32_t tab[4][256], uint32_t c)
{
	return tab[0][c & 0xff] ^ tab[1][(c >> 8) & 0xff] ^ tab[2][(c >> 16) & 0xff] ^
	       tab[3][c >> 24];
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	uint64_t c = ~crc;

	pthread_once(&crc_once_ctl, crc_init);
	while (len && ((uintptr_t)p & 7)) {
		c = _mm_crc32_u8((uint32_t)c, *p++);
		len--;
	}
	while (len >= 3 * CRC_LONG) {
		const uint8_t *end = p + CRC_LONG;
		uint64_t c1 = 0, c2 = 0;

		do {
			uint64_t a, b, d;

			memcpy(&a, p, 8);
			memcpy(&b, p + CRC_LONG, 8);
			memcpy(&d, p + 2 * CRC_LONG, 8);
			c = _mm_crc32_u64(c, a);
			c1 = _mm_crc32_u64(c1, b);
			c2 = _mm_crc32_u64(c2, d);
			p += 8;
		} while (p < end);
		c = crc_shift(crc_long, (uint32_t)c) ^ c1;
		c = crc_shift(crc_long, (uint32_t)c) ^ c2;
		p += 2 * CRC_LONG;
		len -= 3 * CRC_LONG;
	}
	while (len >= 3 * CRC_SHORT) {
		const uint8_t *end = p + CRC_SHORT;
		uint64_t c1 = 0, c2 = 0;

		do {
			uint64_t a, b, d;

			memcpy(&a, p, 8);
			memcpy(&b, p + CRC_SHORT, 8);
			memcpy(&d, p + 2 * CRC_SHORT, 8);
			c = _mm_crc32_u64(c, a);
			c1 = _mm_crc32_u64(c1, b);
			c2 = _mm_crc32_u64(c2, d);
			p += 8;
		} while (p < end);
		c = crc_shift(crc_short, (uint32_t)c) ^ c1;
		c = crc_shift(crc_short, (uint32_t)c) ^ c2;
		p += 2 * CRC_SHORT;
		len -= 3 * CRC_SHORT;
	}
	while (len >= 8) {
		uint64_t v;

		memcpy(&v, p, 8);
		c = _mm_crc32_u64(c, v);
		p += 8;
		len -= 8;
	}
	while (len--)
		c = _mm_crc32_u8((uint32_t)c, *p++);
	return ~(uint32_t)c;
}
#else
uint32_t crc32c_hw(uint32_t crc, const void *buf, size_t len)
{
	return crc32c_sw(crc, buf, len);
}
#endif

int crc32c_have_hw(void)
{
	pthread_once(&crc_once_ctl, crc_init);
	return crc_hw;
}

uint32_t crc32c(uint32_t crc, const void *buf, size_t len)
{
	if (crc32c_have_hw())
		return crc32c_hw(crc, buf, len);
	return crc32c_sw(crc, buf, len);
}
