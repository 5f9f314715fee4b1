/*
 * Fuzz target for the opcode table, the code that reads every byte a client sends. The input is
 * a stream of 64-byte submission entries; the first 4 KiB of input (repeated) also seed the data
 * arena, so offsets land on fuzzer-chosen bytes. A sequence is opened first so entries that name
 * it (seq with the low bit set) reach the engine's deeper paths.
 * Built with clang -fsanitize=fuzzer when available (fuzz_ops), and always as fuzz_ops_replay,
 * which runs the same function on random or given inputs in the unit suite.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "ops.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ARENA (64 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static _Alignas(64) unsigned char arena[ARENA];
	struct engine_opts eo = {
		.dram_bytes = 2u << 20, .slot_bytes = 4096, .host_bytes = 64u << 20, .max_seqs = 16
	};
	struct engine_params p = { { 2, 4, 2, 16, ICE_DTYPE_F32 }, { 16, 16, 32, 1 } };
	static float kv[2 * 2 * 80 * 16];
	struct rt_config cfg;
	struct ops_ctx oc;
	static struct engine *e;
	struct ring_sqe s;
	struct ring_cqe c;
	uint32_t seq;
	size_t i;

	/* One engine for the whole run (setting up tiers per input would dominate the run); each
	 * input starts from the same fixture: the owner's sequences dropped, one opened anew. */
	if (!e && engine_new(&eo, &e))
		abort();
	engine_drop_owner(e, 1);
	for (i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
		kv[i] = (float)(i % 13) - 6.0f;
	if (engine_seq_open(e, 1, &p, &seq) ||
	    engine_append(e, 1, seq, 0, 80, kv, kv + 2 * 80 * 16) ||
	    engine_append(e, 1, seq, 1, 80, kv, kv + 2 * 80 * 16))
		abort(); /* the set-up itself must work, or the target tests nothing */
	config_defaults(&cfg);
	memset(&oc, 0, sizeof(oc));
	oc.eng = e;
	oc.owner = 1;
	oc.arena = arena;
	oc.arena_bytes = ARENA;
	oc.cfg = &cfg;
	for (i = 0; i < ARENA; i++)
		arena[i] = size ? data[i % (size < 4096 ? size : 4096)] : 0;
	for (i = 0; i + sizeof(s) <= size; i += sizeof(s)) {
		memcpy(&s, data + i, sizeof(s));
		if (s.seq & 1)
			s.seq = seq;
		ops_dispatch(&oc, &s, &c);
		if (c.tag != s.tag)
			abort();
	}
	engine_ws_done(&oc.ws);
	engine_ws_done(&oc.ws_refs);
	return 0;
}
