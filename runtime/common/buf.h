/*
 * Growing a caller-owned buffer: the one realloc-if-too-small of the tree. The buffer is any
 * pointer of the caller's, passed by address, with its capacity counted in elements. Growth
 * doubles the capacity, or goes to exactly what is asked when that is more, so a buffer grown
 * a little at a time costs amortised O(1) per element.
 */
#ifndef ICE_COMMON_BUF_H
#define ICE_COMMON_BUF_H

#include <stddef.h>

/*
 * Makes *(T **)pbuf hold at least `need` elements of `size` bytes (size = sizeof(T)); *cap is
 * the capacity in elements, 0 with a NULL buffer at first. Returns 0 (also when the buffer is
 * already large enough: nothing changes), -ENOMEM (the size overflows or the allocator
 * refuses) leaving the buffer and *cap as they were, or -EINVAL for size 0. Contents up to
 * the old capacity are kept; the rest is uninitialised. The caller frees the buffer.
 */
int buf_grow(void *pbuf, size_t *cap, size_t need, size_t size);

#endif
