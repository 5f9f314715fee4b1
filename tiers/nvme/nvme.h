/*
 * NVMe tier: page slots in a preallocated file (fallocate) or a block device, opened with
 * O_DIRECT and moved through io_uring (registered file, registered buffers, batched
 * submission, up to queue_depth transfers in flight per batch). Slot i lives at byte offset
 * i × slot_size; a transfer moves round_up(len, 4 KiB) bytes. The file holds only payloads:
 * fill, version and checksum live in the store (docs/TIERS.md), and the store verifies every
 * page read back.
 *
 * O_DIRECT fallback: when the filesystem refuses O_DIRECT (EINVAL at open or on an aligned
 * probe, e.g. tmpfs on older kernels) the tier falls back to buffered I/O and reports
 * tier.nvme.o_direct 0, unless TIER_F_REQUIRE_DIRECT is set, in which case open fails with
 * -EINVAL. A file that cannot be preallocated (no fallocate support) is made sparse with
 * ftruncate; running out of disk then shows up as -ENOSPC from a write.
 *
 * Without io_uring (ENOSYS, EPERM/EACCES under seccomp or kernel.io_uring_disabled, or
 * TIER_F_NO_URING) the tier does one pread/pwrite per transfer under the same buffer rules and
 * reports tier.nvme.io_uring 0: correct, without batching.
 *
 * The file is created when missing and left in place at close (the caller owns the path). Open
 * checks first that the file system has room for the whole capacity (-ENOSPC otherwise, before
 * anything is allocated), and a failed open leaves nothing behind: a file it created is
 * removed, a file that was there keeps its size.
 */
#ifndef ICE_TIERS_NVME_H
#define ICE_TIERS_NVME_H

#include "tier.h"

extern const struct tier_ops nvme_tier_ops;

struct nvme_info {
	int direct;
	int uring;
	int blockdev;
	int fallocated;
	unsigned registered_regions;
	uint64_t io_fixed, io_plain, io_staged;
	uint64_t io_merged; /* writes that went out as part of a merged WRITEV */
};

void nvme_get_info(struct tier *t, struct nvme_info *ret_info);

#endif
