#include "buf.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int buf_grow(void *pbuf, size_t *cap, size_t need, size_t size)
{
	size_t n;
	void *old, *b;

	if (!size)
		return -EINVAL;
	if (need <= *cap)
		return 0;
	if (need > SIZE_MAX / size)
		return -ENOMEM;
	n = *cap <= SIZE_MAX / 2 / size ? 2 * *cap : need;
	if (n < need)
		n = need;
	/* the pointer is read and written as bytes: T * and void * share one representation */
	memcpy(&old, pbuf, sizeof(old));
	b = realloc(old, n * size);
	if (!b && n > need) {
		n = need; /* doubling was too much to ask: what is needed may still fit */
		b = realloc(old, n * size);
	}
	if (!b)
		return -ENOMEM;
	memcpy(pbuf, &b, sizeof(b));
	*cap = n;
	return 0;
}
