/* How kern_attn splits a KV head's pages across blocks; shared by the launcher and the
 * workspace size so both agree, and independent of the device so sizes are known without one. */
#ifndef ICE_KERNELS_KERN_SPLIT_H
#define ICE_KERNELS_KERN_SPLIT_H

#include <stdint.h>

struct kern_split {
	uint32_t pps;    /* pages per block */
	uint32_t nsplit; /* blocks per KV head */
};

/* About 512 blocks fill an H200 (132 SMs) a few times over; fewer than 2 pages per block
 * only adds combine work. */
#define KERN_ATTN_TARGET_BLOCKS 512u
#define KERN_ATTN_MIN_PPS 2u

static inline struct kern_split kern_attn_split(uint32_t hkv, uint32_t max_pages)
{
	struct kern_split s;
	uint32_t want = hkv ? (KERN_ATTN_TARGET_BLOCKS + hkv - 1) / hkv : 1;

	if (!want)
		want = 1;
	s.pps = (max_pages + want - 1) / want;
	if (s.pps < KERN_ATTN_MIN_PPS)
		s.pps = KERN_ATTN_MIN_PPS;
	s.nsplit = (max_pages + s.pps - 1) / s.pps;
	if (!s.nsplit)
		s.nsplit = 1;
	return s;
}

#endif
