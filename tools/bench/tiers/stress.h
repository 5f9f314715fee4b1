/*
 * The tiers stress run, shared by `icebench tiers --stress` and the 'stress' test suite:
 * puts `factor` × the DRAM cap of pages through the store (dram + nvme under the watermark
 * policy, a hot set touched every batch), reads every page back and checks every byte, and
 * measures peak RSS (VmHWM) against the documented bound:
 *   cap (the pinned pool) + store metadata + nvme staging + RSS at start + slack.
 */
#ifndef ICE_BENCH_TIERS_STRESS_H
#define ICE_BENCH_TIERS_STRESS_H

#include <stddef.h>
#include <stdint.h>

/* Fixed overhead allowed beyond the accounted buffers (allocator, stacks, stdio, ...). */
#define STRESS_SLACK_BYTES (16ull << 20)

struct stress_cfg {
	const char *dir;   /* directory for the nvme file (a real filesystem) */
	uint64_t dram_cap; /* bytes */
	unsigned factor;   /* pages put = factor × dram_cap / slot_size */
	size_t slot_size;
	unsigned batch;
};

struct stress_result {
	uint64_t pages, bytes;
	uint64_t verified, bad;
	uint64_t dram_peak_used_slots, dram_high_slots, dram_slots;
	uint64_t rss_start, vmhwm, rss_bound;
	uint64_t metadata_bytes, staging_bytes, pool_bytes;
	double put_s, get_s;
	uint64_t demoted, promoted;
};

/* 0 and *ret, or -errno (setup failure). Correctness is in ret->bad / ret->vmhwm. */
int stress_run(const struct stress_cfg *cfg, struct stress_result *ret);

#endif
