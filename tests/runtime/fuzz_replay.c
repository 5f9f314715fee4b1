/*
 * Runs a fuzz target without libFuzzer (linked with fuzz_ops.c or fuzz_ring.c): `FILE...`
 * replays inputs (a crash reproducer or a corpus), `--random N` feeds N pseudo-random inputs
 * built from mostly-valid entries with one field broken, so the unit suite exercises the target
 * too. A target whose input is more than a stream of entries defines fuzz_wrap_entries to turn
 * them into its own format.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional (weak): writes the input for n entries into out, returns its length (0: too long). */
__attribute__((weak)) size_t fuzz_wrap_entries(const uint8_t *sqes, size_t n, uint64_t seed,
					       uint8_t *out, size_t cap);

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

int main(int argc, char **argv)
{
	static uint8_t buf[1 << 20], wrapped[1 << 20];
	uint64_t rng = 77;
	long n, i, j;

	if (argc == 3 && !strcmp(argv[1], "--random")) {
		n = atol(argv[2]);
		for (i = 0; i < n; i++) {
			size_t ne = rnd(&rng) % 32 + 1;

			for (j = 0; j < (long)ne; j++) {
				struct ring_sqe s = { 0 };
				uint64_t r = rnd(&rng);

				s.opcode = (uint8_t)(r % (OP__COUNT + 2));
				s.seq = (uint32_t)(r >> 8) | 1;
				s.layer = (uint16_t)((r >> 16) % 3);
				s.tag = (uint64_t)j;
				s.arg[0] = (r >> 20) % 100;
				s.in_off = ((r >> 28) % 1024) * 8;
				s.in_len = (r >> 40) % 9000;
				s.out_off = 32768 + ((r >> 50) % 64) * 8;
				s.out_len = rnd(&rng) % 20000;
				/* break one field more */
				switch (rnd(&rng) % 6) {
				case 0:
					s.flags = 1;
					break;
				case 1:
					s.in_off = rnd(&rng);
					break;
				case 2:
					s.out_len = rnd(&rng);
					break;
				case 3:
					s.arg[1] = 1;
					break;
				default:
					break;
				}
				memcpy(buf + j * sizeof(s), &s, sizeof(s));
			}
			if (fuzz_wrap_entries)
				LLVMFuzzerTestOneInput(wrapped,
						       fuzz_wrap_entries(buf, ne, rnd(&rng),
									 wrapped, sizeof(wrapped)));
			else
				LLVMFuzzerTestOneInput(buf, ne * sizeof(struct ring_sqe));
		}
		printf("%ld random inputs ran\n", n);
		return 0;
	}
	for (i = 1; i < argc; i++) {
		FILE *f = fopen(argv[i], "rb");
		size_t len;

		if (!f) {
			perror(argv[i]);
			return 1;
		}
		len = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		LLVMFuzzerTestOneInput(buf, len);
	}
	return 0;
}
