#include "segment.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

int seg_layout(uint32_t sq_entries, uint32_t cq_entries, uint64_t arena_bytes,
	       struct seg_layout *ret_lay)
{
	struct seg_layout l;

	if (sq_entries < 2 || (sq_entries & (sq_entries - 1)) || cq_entries < 2 ||
	    (cq_entries & (cq_entries - 1)) || sq_entries > (1u << 16) || cq_entries > (1u << 16) ||
	    !arena_bytes || arena_bytes > (1ull << 32) || arena_bytes % SEG_ALIGN)
		return -EINVAL;
	l.sq_entries = sq_entries;
	l.cq_entries = cq_entries;
	l.sq_off = SEG_ALIGN;
	l.cq_off = align_up(l.sq_off + ring_bytes(sq_entries, sizeof(struct ring_sqe)), SEG_ALIGN);
	l.arena_off =
		align_up(l.cq_off + ring_bytes(cq_entries, sizeof(struct ring_cqe)), SEG_ALIGN);
	l.arena_bytes = arena_bytes;
	l.total_bytes = l.arena_off + arena_bytes;
	*ret_lay = l;
	return 0;
}

static int seg_map(struct segment *sg, int fd, const struct seg_layout *lay, int create)
{
	void *m = mmap(NULL, lay->total_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	int err;

	if (m == MAP_FAILED)
		return -errno;
	sg->fd = fd;
	sg->map = m;
	sg->lay = *lay;
	sg->hdr = m;
	sg->arena = (unsigned char *)m + lay->arena_off;
	err = ring_init(&sg->sq, (unsigned char *)m + lay->sq_off, lay->sq_entries,
			sizeof(struct ring_sqe), create);
	if (!err)
		err = ring_init(&sg->cq, (unsigned char *)m + lay->cq_off, lay->cq_entries,
				sizeof(struct ring_cqe), create);
	if (err) {
		munmap(m, lay->total_bytes);
		sg->map = NULL;
		return err;
	}
	return 0;
}

int seg_create(struct segment *sg, const struct seg_layout *lay, uint32_t client_id)
{
	struct seg_hdr *h;
	int fd, err;

	fd = memfd_create("icecache-seg", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)lay->total_bytes) < 0) {
		err = -errno;
		goto out_close;
	}
	/* Without these seals the client could shrink the file and the daemon would take SIGBUS
	 * touching its own mapping. */
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		err = -errno;
		goto out_close;
	}
	err = seg_map(sg, fd, lay, 1);
	if (err)
		goto out_close;
	h = sg->hdr;
	h->magic = PROTO_MAGIC;
	h->version = PROTO_VERSION;
	h->client_id = client_id;
	h->sq_entries = lay->sq_entries;
	h->cq_entries = lay->cq_entries;
	h->sqe_size = sizeof(struct ring_sqe);
	h->cqe_size = sizeof(struct ring_cqe);
	h->sq_off = lay->sq_off;
	h->cq_off = lay->cq_off;
	h->arena_off = lay->arena_off;
	h->arena_bytes = lay->arena_bytes;
	h->total_bytes = lay->total_bytes;
	return 0;
out_close:
	close(fd);
	return err;
}

int seg_attach(struct segment *sg, int fd, uint64_t expect_bytes)
{
	struct seg_layout want;
	struct seg_hdr h;
	struct stat st;
	void *m;
	int err;

	if (fstat(fd, &st) < 0)
		return -errno;
	if ((uint64_t)st.st_size != expect_bytes || expect_bytes < SEG_ALIGN)
		return -EPROTO;
	m = mmap(NULL, SEG_ALIGN, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED)
		return -errno;
	memcpy(&h, m, sizeof(h));
	munmap(m, SEG_ALIGN);
	if (h.magic != PROTO_MAGIC || h.version != PROTO_VERSION ||
	    h.sqe_size != sizeof(struct ring_sqe) || h.cqe_size != sizeof(struct ring_cqe))
		return -EPROTO;
	/* Recompute the layout ourselves and insist the header says the same thing. */
	err = seg_layout(h.sq_entries, h.cq_entries, h.arena_bytes, &want);
	if (err || want.sq_off != h.sq_off || want.cq_off != h.cq_off ||
	    want.arena_off != h.arena_off || want.total_bytes != h.total_bytes ||
	    want.total_bytes != expect_bytes)
		return -EPROTO;
	return seg_map(sg, fd, &want, 0);
}

void seg_close(struct segment *sg)
{
	if (!sg)
		return;
	if (sg->map)
		munmap(sg->map, sg->lay.total_bytes);
	sg->map = NULL;
	if (sg->fd >= 0)
		close(sg->fd);
	sg->fd = -1;
}
