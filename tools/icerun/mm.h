/*
 * Matrix kernels for the runner: Y = X · Wᵀ with W quantized (Q4_0, Q4_1, Q8_0), F16 or F32,
 * dequantised on the fly. Every kernel has a plain C version (always built, used as the
 * reference in tests and on CPUs without AVX-512) and an AVX-512 version picked at run time.
 */
#ifndef ICERUN_MM_H
#define ICERUN_MM_H

#include <stddef.h>
#include <stdint.h>

#include "pool.h"

struct qmat {
	uint32_t type;  /* enum gguf_ttype */
	int rows, cols; /* rows outputs, cols inputs (cols is the contiguous dimension) */
	size_t row_bytes;
	const uint8_t *data;
};

/* 0 when the CPU has AVX-512F (the fast kernels run), 1 when forced or falling back to C. */
void mm_force_scalar(int on);
int mm_simd(void);

/* Dequantises row r of W into out[cols]. */
void mm_dequant_row(const struct qmat *w, int r, float *out);

/*
 * Y[n][rows] = X[n][cols] · Wᵀ. Rows are split across the pool; scratch is per call. ldy is
 * Y's row stride (>= rows). Returns -ENOMEM if the tile buffers cannot be allocated.
 */
int mm_matmul(const struct qmat *w, const float *x, int n, float *y, int ldy, struct pool *p);

/* Reference kernel: the same product with dequantised rows and double accumulation. */
void mm_matmul_ref(const struct qmat *w, const float *x, int n, float *y, int ldy);

/* In place x[i] = exp(x[i] - max), returns the sum (vectorised exp, rel. error ~1e-7). */
float mm_softmax_exp(float *x, int n, float max);
float mm_dot(const float *a, const float *b, int n);
/* y += a * x */
void mm_axpy(float *y, float a, const float *x, int n);

#endif
