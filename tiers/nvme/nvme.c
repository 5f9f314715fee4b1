/*
 * The NVMe tier: page slots in a preallocated file or a block device, moved with io_uring.
 * See nvme.h for the contract; docs/TIERS.md for the file layout and the fallbacks.
 *
 * Each ring has its own staging area (queue_depth slots, registered buffer 0) for caller
 * buffers that are not aligned or too short for whole 4 KiB blocks; memory the store says io
 * buffers come from (the dram pool) is registered too (buffers 1..), so demotion and
 * promotion move pages with READ_FIXED/WRITE_FIXED and no copy. The file is registered as
 * fixed file 0. Batches keep up to queue_depth transfers in flight (a sliding window).
 */
#include "nvme.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <linux/fs.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

/* io_uring takes registered buffers of at most 1 GiB each. */
#define NVME_REG_CHUNK (1ull << 30)
#define NVME_MAX_REG 64u

enum xfer_mode { X_FIXED, X_PLAIN, X_STAGED, X_VEC };

/* Most slots one merged write covers (64 × 8 KiB = 512 KiB). */
#define NVME_VEC_MAX 64u

struct nvme_ring {
	pthread_mutex_t lock;
	struct io_uring ring;
	int ring_ok;
	/* The last buffer registration on this ring worked: [stage, reg...] are fixed buffers
	 * 0, 1... When it did not (RLIMIT_MEMLOCK), transfers go unregistered. */
	int bufs_ok;
	uint8_t *stage;
	/* Per tag (one in-flight transfer): which io of the batch and how. */
	uint32_t *tag_io;
	uint8_t *tag_mode;
	uint32_t *free_tags;
	/* Merged writes: how many ios a tag covers, and its iovecs (NVME_VEC_MAX per tag). */
	uint16_t *tag_n;
	struct iovec *tag_iov;
};

struct nvme_tier {
	struct tier tier;
	int fd;
	int direct;
	int uring;
	int blockdev;
	int fallocated;
	int created;     /* this open made the file: remove it if the open fails */
	off_t orig_size; /* the file's size before this open */
	unsigned depth, nrings;
	unsigned next_ring;
	struct nvme_ring *rings;
	/* Registered buffers shared by all rings after each ring's own stage (index 0). */
	struct iovec reg[NVME_MAX_REG];
	unsigned nreg;
	uint64_t n_fixed, n_plain, n_staged, n_merged;
};

static int nvme_reg_find(struct nvme_tier *v, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	unsigned i;

	for (i = 0; i < v->nreg; i++) {
		const uint8_t *b = v->reg[i].iov_base;

		if (p >= b && p + len <= b + v->reg[i].iov_len)
			return (int)i + 1;
	}
	return -1;
}

/* Registers [stage, reg...] with one ring; rings are idle when this runs. */
static int nvme_ring_register(struct nvme_tier *v, struct nvme_ring *r, unsigned nreg)
{
	struct iovec iov[NVME_MAX_REG + 1];

	iov[0].iov_base = r->stage;
	iov[0].iov_len = (size_t)v->depth * v->tier.slot_size;
	memcpy(&iov[1], v->reg, nreg * sizeof(iov[0]));
	if (!v->uring)
		return 0;
	io_uring_unregister_buffers(&r->ring);
	r->bufs_ok = io_uring_register_buffers(&r->ring, iov, nreg + 1) == 0;
	return r->bufs_ok ? 0 : -ENOMEM;
}

static int nvme_register_mem(struct tier *t, void *base, size_t len)
{
	struct nvme_tier *v = (struct nvme_tier *)t;
	unsigned old = v->nreg, i;
	uint8_t *p = base;
	int r = 0;

	if (!base || !len)
		return -EINVAL;
	if (!v->uring)
		return -ENOTSUP;
	while (len && v->nreg < NVME_MAX_REG) {
		size_t k = len < NVME_REG_CHUNK ? len : NVME_REG_CHUNK;

		v->reg[v->nreg].iov_base = p;
		v->reg[v->nreg++].iov_len = k;
		p += k;
		len -= k;
	}
	if (len)
		r = -E2BIG;
	for (i = 0; i < v->nrings && r == 0; i++) {
		pthread_mutex_lock(&v->rings[i].lock);
		r = nvme_ring_register(v, &v->rings[i], v->nreg);
		pthread_mutex_unlock(&v->rings[i].lock);
	}
	if (r < 0) {
		/* Not fatal (e.g. RLIMIT_MEMLOCK): that memory is then moved unregistered. */
		v->nreg = old;
		for (i = 0; i < v->nrings; i++) {
			pthread_mutex_lock(&v->rings[i].lock);
			nvme_ring_register(v, &v->rings[i], v->nreg);
			pthread_mutex_unlock(&v->rings[i].lock);
		}
	}
	return r;
}

static struct nvme_ring *nvme_ring_get(struct nvme_tier *v)
{
	unsigned start = __atomic_fetch_add(&v->next_ring, 1, __ATOMIC_RELAXED), i;

	for (i = 0; i < v->nrings; i++) {
		struct nvme_ring *r = &v->rings[(start + i) % v->nrings];

		if (pthread_mutex_trylock(&r->lock) == 0)
			return r;
	}
	pthread_mutex_lock(&v->rings[start % v->nrings].lock);
	return &v->rings[start % v->nrings];
}

static size_t nvme_xfer_len(struct nvme_tier *v, uint32_t len)
{
	return v->direct ? tier_round_up(len) : len;
}

/* Prepares one transfer on tag `tag`; returns how it moves. */
static enum xfer_mode nvme_prep(struct nvme_tier *v, struct nvme_ring *r, struct tier_io *io,
				unsigned tag, int write)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
	size_t xfer = nvme_xfer_len(v, io->len), ss = v->tier.slot_size;
	uint64_t off = io->slot * ss;
	enum xfer_mode mode;
	int idx = -1;

	if (io->cap >= xfer && r->bufs_ok)
		idx = nvme_reg_find(v, io->buf, xfer);
	if (idx > 0)
		mode = X_FIXED;
	else if (io->cap >= xfer && (!v->direct || ((uintptr_t)io->buf % TIER_ALIGN) == 0))
		mode = X_PLAIN;
	else
		mode = X_STAGED;
	if (mode == X_STAGED) {
		uint8_t *st = r->stage + (size_t)tag * ss;

		if (write) {
			memcpy(st, io->buf, io->len);
			memset(st + io->len, 0, xfer - io->len);
			if (r->bufs_ok)
				io_uring_prep_write_fixed(sqe, 0, st, (unsigned)xfer, off, 0);
			else
				io_uring_prep_write(sqe, 0, st, (unsigned)xfer, off);
		} else if (r->bufs_ok) {
			io_uring_prep_read_fixed(sqe, 0, st, (unsigned)xfer, off, 0);
		} else {
			io_uring_prep_read(sqe, 0, st, (unsigned)xfer, off);
		}
	} else if (mode == X_FIXED) {
		if (write)
			io_uring_prep_write_fixed(sqe, 0, io->buf, (unsigned)xfer, off, idx);
		else
			io_uring_prep_read_fixed(sqe, 0, io->buf, (unsigned)xfer, off, idx);
	} else {
		if (write)
			io_uring_prep_write(sqe, 0, io->buf, (unsigned)xfer, off);
		else
			io_uring_prep_read(sqe, 0, io->buf, (unsigned)xfer, off);
	}
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, tag);
	return mode;
}

#define TAG_FREE 0xffu

/* The ring failed outright (not a per-request error): fail the batch and retire the ring so
 * stale queued entries can never run later. Exiting the ring waits for what it accepted. */
static void nvme_ring_fail(struct nvme_ring *r, struct tier_io *ios, unsigned n, unsigned next,
			   unsigned depth, int err)
{
	unsigned tag;

	for (tag = 0; tag < depth; tag++) {
		unsigned j;

		if (r->tag_mode[tag] == TAG_FREE)
			continue;
		for (j = 0; j < r->tag_n[tag]; j++)
			ios[r->tag_io[tag] + j].res = err;
	}
	for (; next < n; next++)
		ios[next].res = err;
	io_uring_queue_exit(&r->ring);
	r->ring_ok = 0;
}

/*
 * Writes of consecutive slots from buffers the device can take in place (a demotion: slots
 * are handed out in order, the pages come from the DRAM pool) are merged into one WRITEV:
 * this disk writes 8 KiB blocks at ~0.4 GB/s and 512 KiB ones at ~1.5 GB/s. Returns how many
 * ios from i on form such a run (1 = no merge).
 */
static unsigned nvme_write_run(struct nvme_tier *v, const struct tier_io *ios, unsigned i,
			       unsigned n)
{
	size_t ss = v->tier.slot_size;
	unsigned k;

	for (k = 0; i + k < n && k < NVME_VEC_MAX; k++) {
		const struct tier_io *io = &ios[i + k];
		size_t xfer = nvme_xfer_len(v, io->len);

		if (io->cap < xfer || (v->direct && ((uintptr_t)io->buf % TIER_ALIGN)))
			break;
		if (k && io->slot != ios[i + k - 1].slot + 1)
			break;
		/* only the last of a run may be shorter than a slot: the next starts at +ss */
		if (xfer != ss) {
			k++;
			break;
		}
	}
	return k ? k : 1;
}

static void nvme_prep_vec(struct nvme_tier *v, struct nvme_ring *r, struct tier_io *ios, unsigned k,
			  unsigned tag)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&r->ring);
	struct iovec *iov = &r->tag_iov[(size_t)tag * NVME_VEC_MAX];
	unsigned j;

	for (j = 0; j < k; j++) {
		iov[j].iov_base = ios[j].buf;
		iov[j].iov_len = nvme_xfer_len(v, ios[j].len);
	}
	io_uring_prep_writev(sqe, 0, iov, k, ios[0].slot * v->tier.slot_size);
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, tag);
}

/* The fallback without io_uring: one pread/pwrite per transfer, same buffer rules. */
static void nvme_rw_sync(struct nvme_tier *v, struct nvme_ring *r, struct tier_io *ios, unsigned n,
			 int write, uint64_t *cnt)
{
	size_t ss = v->tier.slot_size;
	unsigned i;

	for (i = 0; i < n; i++) {
		struct tier_io *io = &ios[i];
		size_t xfer = nvme_xfer_len(v, io->len);
		int direct = io->cap >= xfer &&
			     (!v->direct || ((uintptr_t)io->buf % TIER_ALIGN) == 0);
		uint8_t *b = direct ? io->buf : r->stage;
		off_t off = (off_t)(io->slot * ss);
		ssize_t got;

		cnt[direct ? X_PLAIN : X_STAGED]++;
		if (write && !direct) {
			memcpy(b, io->buf, io->len);
			memset(b + io->len, 0, xfer - io->len);
		}
		do {
			got = write ? pwrite(v->fd, b, xfer, off) : pread(v->fd, b, xfer, off);
		} while (got < 0 && errno == EINTR);
		if (got < 0)
			io->res = -errno;
		else if ((size_t)got < io->len)
			io->res = -EIO;
		else
			io->res = 0;
		if (io->res == 0 && !write && !direct)
			memcpy(io->buf, b, io->len);
	}
}

static int nvme_rw(struct tier *t, struct tier_io *ios, unsigned n, int write)
{
	struct nvme_tier *v = (struct nvme_tier *)t;
	struct nvme_ring *r = nvme_ring_get(v);
	unsigned next = 0, inflight = 0, nfree = v->depth, i;
	uint64_t cnt[4] = { 0, 0, 0, 0 };
	int first = 0;

	if (!v->uring) {
		nvme_rw_sync(v, r, ios, n, write, cnt);
		goto out;
	}
	if (!r->ring_ok) {
		for (i = 0; i < n; i++)
			ios[i].res = -EIO;
		goto out;
	}
	for (i = 0; i < v->depth; i++) {
		r->free_tags[i] = i;
		r->tag_mode[i] = TAG_FREE;
	}
	while (next < n || inflight) {
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		int ret;

		while (next < n && nfree) {
			unsigned tag = r->free_tags[--nfree];
			unsigned k = write ? nvme_write_run(v, ios, next, n) : 1;
			enum xfer_mode m;

			if (k > 1) {
				nvme_prep_vec(v, r, &ios[next], k, tag);
				m = X_VEC;
			} else {
				m = nvme_prep(v, r, &ios[next], tag, write);
			}
			r->tag_io[tag] = next;
			r->tag_n[tag] = (uint16_t)k;
			r->tag_mode[tag] = (uint8_t)m;
			cnt[m] += k;
			next += k;
			inflight++;
		}
		/* Once everything is queued the batch needs all of it back: one enter that waits
		 * for the lot saves a wake-up per completion wave. */
		ret = io_uring_submit_and_wait(&r->ring, next < n ? 1 : inflight);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY) {
			nvme_ring_fail(r, ios, n, next, v->depth, ret);
			break;
		}
		io_uring_for_each_cqe(&r->ring, head, cqe)
		{
			unsigned tag = (unsigned)cqe->user_data;
			struct tier_io *io = &ios[r->tag_io[tag]];

			if (r->tag_mode[tag] == X_VEC) {
				size_t total = 0;
				unsigned j, k = r->tag_n[tag];
				int res;

				for (j = 0; j < k; j++)
					total += nvme_xfer_len(v, io[j].len);
				/* a short merged write: which pages made it is unknown, fail them all */
				res = cqe->res < 0 ? cqe->res : (size_t)cqe->res < total ? -EIO : 0;
				for (j = 0; j < k; j++)
					io[j].res = res;
				goto reap;
			}
			if (cqe->res < 0)
				io->res = cqe->res;
			else if ((size_t)cqe->res < io->len)
				io->res = -EIO; /* short: past the end of the file or device */
			else
				io->res = 0;
			if (io->res == 0 && !write && r->tag_mode[tag] == X_STAGED)
				memcpy(io->buf, r->stage + (size_t)tag * t->slot_size, io->len);
reap:
			r->tag_mode[tag] = TAG_FREE;
			r->free_tags[nfree++] = tag;
			inflight--;
			seen++;
		}
		io_uring_cq_advance(&r->ring, seen);
	}
out:
	pthread_mutex_unlock(&r->lock);
	__atomic_add_fetch(&v->n_fixed, cnt[X_FIXED], __ATOMIC_RELAXED);
	__atomic_add_fetch(&v->n_plain, cnt[X_PLAIN], __ATOMIC_RELAXED);
	__atomic_add_fetch(&v->n_staged, cnt[X_STAGED], __ATOMIC_RELAXED);
	__atomic_add_fetch(&v->n_merged, cnt[X_VEC], __ATOMIC_RELAXED);
	for (i = 0; i < n; i++)
		if (ios[i].res < 0 && !first)
			first = ios[i].res;
	return first;
}

static int nvme_read(struct tier *t, struct tier_io *ios, unsigned n)
{
	return nvme_rw(t, ios, n, 0);
}

static int nvme_write(struct tier *t, struct tier_io *ios, unsigned n)
{
	return nvme_rw(t, ios, n, 1);
}

static int nvme_ring_init(struct nvme_tier *v, struct nvme_ring *r)
{
	struct io_uring_params p;
	size_t stage_len = (size_t)v->depth * v->tier.slot_size;
	int ret;

	pthread_mutex_init(&r->lock, NULL);
	r->stage =
		mmap(NULL, stage_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r->stage == MAP_FAILED) {
		r->stage = NULL;
		return -ENOMEM;
	}
	if (!v->uring)
		return 0;
	memset(&p, 0, sizeof(p));
	/* COOP_TASKRUN: completions are run when we enter the kernel anyway, no IPIs. */
	p.flags = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL;
	ret = io_uring_queue_init_params(v->depth, &r->ring, &p);
	if (ret == -EINVAL) {
		memset(&p, 0, sizeof(p));
		ret = io_uring_queue_init_params(v->depth, &r->ring, &p);
	}
	if (ret < 0)
		return ret;
	r->ring_ok = 1;
	r->tag_io = calloc(v->depth, sizeof(*r->tag_io));
	r->tag_mode = calloc(v->depth, sizeof(*r->tag_mode));
	r->free_tags = calloc(v->depth, sizeof(*r->free_tags));
	r->tag_n = calloc(v->depth, sizeof(*r->tag_n));
	r->tag_iov = calloc((size_t)v->depth * NVME_VEC_MAX, sizeof(*r->tag_iov));
	if (!r->tag_io || !r->tag_mode || !r->free_tags || !r->tag_n || !r->tag_iov)
		return -ENOMEM;
	ret = io_uring_register_files(&r->ring, &v->fd, 1);
	if (ret < 0)
		return ret;
	nvme_ring_register(v, r, 0); /* unregistered staging still works */
	return 0;
}

static void nvme_ring_done(struct nvme_tier *v, struct nvme_ring *r)
{
	if (r->ring_ok)
		io_uring_queue_exit(&r->ring);
	if (r->stage)
		munmap(r->stage, (size_t)v->depth * v->tier.slot_size);
	free(r->tag_io);
	free(r->tag_mode);
	free(r->free_tags);
	free(r->tag_n);
	free(r->tag_iov);
	pthread_mutex_destroy(&r->lock);
}

/* Does an aligned O_DIRECT write+read at offset 0 work? (tmpfs and some FUSE say EINVAL.) */
static int nvme_probe_direct(int fd)
{
	void *b;
	int ok;

	if (posix_memalign(&b, TIER_ALIGN, TIER_ALIGN))
		return -ENOMEM;
	memset(b, 0, TIER_ALIGN);
	ok = pwrite(fd, b, TIER_ALIGN, 0) == TIER_ALIGN &&
	     pread(fd, b, TIER_ALIGN, 0) == TIER_ALIGN;
	free(b);
	return ok ? 0 : -EINVAL;
}

/*
 * Would preallocating cap bytes fit in the file system? Asked first, so that a tier larger
 * than its file system fails at once instead of filling the disk on the way to -ENOSPC. Counts
 * what the file holds already (a tier file kept from an earlier run) and only what unprivileged
 * users may take (f_bavail): the blocks kept for root are not the tier's to fill.
 */
static int nvme_check_space(int fd, const struct stat *st, uint64_t cap)
{
	uint64_t have = (uint64_t)st->st_blocks * 512, avail;
	struct statvfs vs;

	if (cap <= have || fstatvfs(fd, &vs) < 0)
		return 0; /* unknown: fallocate answers */
	avail = (uint64_t)vs.f_bavail * vs.f_frsize;
	return cap - have > avail ? -ENOSPC : 0;
}

/* O_DIRECT when the file system takes it (an aligned write+read at offset 0 works). */
static int nvme_set_direct(struct nvme_tier *v, const struct tier_config *cfg)
{
	int fl = fcntl(v->fd, F_GETFL);

	if (cfg->flags & TIER_F_NO_DIRECT)
		return 0;
	if (fl >= 0 && fcntl(v->fd, F_SETFL, fl | O_DIRECT) == 0) {
		if (nvme_probe_direct(v->fd) == 0) {
			v->direct = 1;
			return 0;
		}
		fcntl(v->fd, F_SETFL, fl);
	}
	/* -EINVAL: this file system refuses O_DIRECT */
	return (cfg->flags & TIER_F_REQUIRE_DIRECT) ? -EINVAL : 0;
}

/* A failed open leaves nothing behind: a file it created is removed, one that was there gets
 * its old size back (a block device is left as it is). */
static void nvme_undo_file(struct nvme_tier *v, const char *path)
{
	struct stat st;

	if (v->fd < 0)
		return;
	if (v->created)
		unlink(path);
	else if (!v->blockdev && fstat(v->fd, &st) == 0 && st.st_size != v->orig_size &&
		 ftruncate(v->fd, v->orig_size) < 0) {
		/* nothing more to undo with */
	}
	close(v->fd);
	v->fd = -1;
}

static int nvme_open_fd(struct nvme_tier *v, const struct tier_config *cfg, uint64_t *cap)
{
	struct stat st;
	int fd, r;

	/* O_EXCL tells whether the file is ours to remove on failure. */
	fd = open(cfg->path, O_RDWR | O_CLOEXEC | O_CREAT | O_EXCL, 0600);
	if (fd >= 0)
		v->created = 1;
	else if (errno == EEXIST)
		fd = open(cfg->path, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	v->fd = fd;
	if (fstat(fd, &st) < 0) {
		r = -errno;
		goto out_undo;
	}
	v->orig_size = st.st_size;
	if (S_ISBLK(st.st_mode)) {
		v->blockdev = 1;
	} else if (!S_ISREG(st.st_mode)) {
		r = -EINVAL;
		goto out_undo;
	} else {
		r = nvme_check_space(fd, &st, *cap);
		if (r)
			goto out_undo;
	}
	r = nvme_set_direct(v, cfg);
	if (r)
		goto out_undo;
	if (v->blockdev) {
		uint64_t bytes = 0;

		if (ioctl(fd, BLKGETSIZE64, &bytes) < 0) {
			r = -errno;
			goto out_undo;
		}
		if (bytes < *cap)
			*cap = bytes;
	} else if (fallocate(fd, 0, 0, (off_t)*cap) == 0) {
		v->fallocated = 1;
	} else if (errno == EOPNOTSUPP || errno == ENOSYS) {
		/* No preallocation here: a sparse file; a full disk then shows up as -ENOSPC
		 * from a write, which the store reports per page. */
		if (ftruncate(fd, (off_t)*cap) < 0) {
			r = -errno;
			goto out_undo;
		}
	} else {
		r = -errno;
		goto out_undo;
	}
	return 0;
out_undo:
	nvme_undo_file(v, cfg->path);
	return r;
}

static int nvme_open(const struct tier_config *cfg, struct tier **ret_tier)
{
	struct tier_config c = *cfg;
	struct nvme_tier *v;
	unsigned i;
	int r;

	if (!cfg->path || !*cfg->path)
		return -EINVAL;
	if (cfg->queue_depth > 4096 || cfg->nrings > 64)
		return -EINVAL;
	v = calloc(1, sizeof(*v));
	if (!v)
		return -ENOMEM;
	v->fd = -1;
	v->depth = cfg->queue_depth ? cfg->queue_depth : 256;
	v->nrings = cfg->nrings ? cfg->nrings : 2;
	c.capacity_bytes -= c.capacity_bytes % c.slot_size;
	r = nvme_open_fd(v, cfg, &c.capacity_bytes);
	if (r < 0)
		goto out_free;
	r = tier_init_common(&v->tier, &nvme_tier_ops, &c);
	if (r < 0)
		goto out_close;
	v->rings = calloc(v->nrings, sizeof(*v->rings));
	if (!v->rings) {
		r = -ENOMEM;
		goto out_done;
	}
	v->uring = !(cfg->flags & TIER_F_NO_URING);
	for (i = 0; i < v->nrings; i++) {
		r = nvme_ring_init(v, &v->rings[i]);
		if (i == 0 && v->uring && (r == -ENOSYS || r == -EPERM || r == -EACCES)) {
			/* io_uring is off here (old kernel, seccomp, io_uring_disabled): go on
			 * with synchronous I/O, reported as tier.nvme.io_uring 0. */
			nvme_ring_done(v, &v->rings[0]);
			memset(&v->rings[0], 0, sizeof(v->rings[0]));
			v->uring = 0;
			r = nvme_ring_init(v, &v->rings[i]);
		}
		if (r < 0)
			goto out_rings;
	}
	*ret_tier = &v->tier;
	return 0;
out_rings:
	for (i = 0; i < v->nrings; i++)
		nvme_ring_done(v, &v->rings[i]);
	free(v->rings);
out_done:
	tier_done_common(&v->tier);
out_close:
	nvme_undo_file(v, cfg->path);
out_free:
	free(v);
	return r;
}

static void nvme_close(struct tier *t)
{
	struct nvme_tier *v = (struct nvme_tier *)t;
	unsigned i;

	for (i = 0; i < v->nrings; i++)
		nvme_ring_done(v, &v->rings[i]);
	free(v->rings);
	close(v->fd);
	tier_done_common(t);
	free(v);
}

static void nvme_stats(struct tier *t, struct stats_buf *sb, const char *prefix)
{
	struct nvme_tier *v = (struct nvme_tier *)t;

	stats_put_u64(sb, prefix, "o_direct", (uint64_t)v->direct);
	stats_put_u64(sb, prefix, "io_uring", (uint64_t)v->uring);
	stats_put_u64(sb, prefix, "block_device", (uint64_t)v->blockdev);
	stats_put_u64(sb, prefix, "fallocated", (uint64_t)v->fallocated);
	stats_put_u64(sb, prefix, "queue_depth", v->depth);
	stats_put_u64(sb, prefix, "rings", v->nrings);
	stats_put_u64(sb, prefix, "registered_regions", v->nreg);
	stats_put_u64(sb, prefix, "io_fixed", __atomic_load_n(&v->n_fixed, __ATOMIC_RELAXED));
	stats_put_u64(sb, prefix, "io_plain", __atomic_load_n(&v->n_plain, __ATOMIC_RELAXED));
	stats_put_u64(sb, prefix, "io_staged", __atomic_load_n(&v->n_staged, __ATOMIC_RELAXED));
	stats_put_u64(sb, prefix, "io_merged", __atomic_load_n(&v->n_merged, __ATOMIC_RELAXED));
}

void nvme_get_info(struct tier *t, struct nvme_info *ret_info)
{
	struct nvme_tier *v = (struct nvme_tier *)t;

	ret_info->direct = v->direct;
	ret_info->uring = v->uring;
	ret_info->blockdev = v->blockdev;
	ret_info->fallocated = v->fallocated;
	ret_info->registered_regions = v->nreg;
	ret_info->io_fixed = __atomic_load_n(&v->n_fixed, __ATOMIC_RELAXED);
	ret_info->io_plain = __atomic_load_n(&v->n_plain, __ATOMIC_RELAXED);
	ret_info->io_staged = __atomic_load_n(&v->n_staged, __ATOMIC_RELAXED);
	ret_info->io_merged = __atomic_load_n(&v->n_merged, __ATOMIC_RELAXED);
}

const struct tier_ops nvme_tier_ops = {
	.name = "nvme",
	.kind = TIER_NVME,
	.open = nvme_open,
	.close = nvme_close,
	.read = nvme_read,
	.write = nvme_write,
	.register_mem = nvme_register_mem,
	.stats = nvme_stats,
};
