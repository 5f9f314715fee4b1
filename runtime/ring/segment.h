/*
 * A client's shared segment: one memfd holding the header page, the SQ ring, the CQ ring and
 * the data arena (proto.h). The daemon creates and seals it (no shrink, no grow: a client cannot
 * truncate it under the daemon's mapping), the client attaches to the fd it receives.
 */
#ifndef ICE_RUNTIME_SEGMENT_H
#define ICE_RUNTIME_SEGMENT_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"
#include "ring.h"

struct seg_layout {
	uint32_t sq_entries, cq_entries;
	uint64_t sq_off, cq_off, arena_off, arena_bytes, total_bytes;
};

struct segment {
	int fd;
	void *map;
	struct seg_layout lay; /* private: what this side trusts */
	struct seg_hdr *hdr;
	unsigned char *arena;
	struct ring sq, cq;
};

int seg_layout(uint32_t sq_entries, uint32_t cq_entries, uint64_t arena_bytes,
	       struct seg_layout *ret_lay);
/* Daemon: memfd + seal + map + rings laid out. */
int seg_create(struct segment *sg, const struct seg_layout *lay, uint32_t client_id);
/* Client: maps fd (its size must be expect_bytes) and checks the header describes a layout
 * that fits; takes ownership of fd on success. */
int seg_attach(struct segment *sg, int fd, uint64_t expect_bytes);
void seg_close(struct segment *sg);

#endif
