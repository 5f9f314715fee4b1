/*
 * The rest term's reference (index/select.h), in double, shared by the selection module's unit
 * test and the runtime's end-to-end checks: every page p with !in[p] and fill[p] > 0 stands in
 * for its tokens as fill[p] copies of their mean key and mean value, and for query q the term
 * is log sum_p fill[p] exp(s q . mean key) with the mean values weighted by those terms.
 * The means are rounded as select_sums keeps them: int8 codes in steps of 1/127 of the
 * largest entry (index/select.h). row(ctx, p, t, 0) is the K row of page p's token t,
 * row(ctx, p, t, 1) its V row.
 */
#ifndef ICE_TESTS_REF_REST_H
#define ICE_TESTS_REF_REST_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef const float *(*ref_rest_row_fn)(const void *ctx, uint32_t p, uint32_t t, int v);

/* Page p's mean K (v = 0) or V row, rounded to its int8 codes as select_sums keeps it. */
static inline void ref_rest_mean(ref_rest_row_fn row, const void *ctx, uint32_t p, uint32_t n,
				 int v, uint32_t d, double *out)
{
	double mx = 0, sc;
	uint32_t t, i;

	for (i = 0; i < d; i++) {
		out[i] = 0;
		for (t = 0; t < n; t++)
			out[i] += row(ctx, p, t, v)[i];
		out[i] = (float)(out[i] / n);
		mx = fmax(mx, fabs(out[i]));
	}
	sc = (float)(mx / 127.0);
	for (i = 0; i < d; i++)
		out[i] = sc > 0 ? rint(out[i] / sc) * sc : 0;
}

/* Checks one query's term r[0 .. d] (log weight, then mean value) within relative tol. */
static inline void ref_rest_check(uint32_t np, const unsigned char *in, const uint32_t *fill,
				  ref_rest_row_fn row, const void *ctx, const float *q, uint32_t d,
				  double s, double tol, const float *r)
{
	double *x = malloc((np ? np : 1) * sizeof(double)), *acc = calloc(d, sizeof(double));
	double *mean = malloc(d * sizeof(double));
	double m = -INFINITY, l = 0, lse;
	uint32_t p, i;

	ck_assert(x && acc && mean);
	for (p = 0; p < np; p++) {
		double dot = 0;

		x[p] = -INFINITY;
		if (in[p] || !fill[p])
			continue;
		ref_rest_mean(row, ctx, p, fill[p], 0, d, mean);
		for (i = 0; i < d; i++)
			dot += (double)q[i] * mean[i];
		x[p] = s * dot + log((double)fill[p]);
		m = fmax(m, x[p]);
	}
	for (p = 0; p < np; p++) {
		double w;

		if (isinf(x[p]))
			continue;
		w = exp(x[p] - m);
		l += w;
		ref_rest_mean(row, ctx, p, fill[p], 1, d, mean);
		for (i = 0; i < d; i++)
			acc[i] += w * mean[i];
	}
	if (l == 0) {
		ck_assert(isinf(r[0]) && r[0] < 0);
		for (i = 0; i < d; i++)
			ck_assert(r[1 + i] == 0);
	} else {
		lse = m + log(l);
		ck_assert_msg(fabs(r[0] - lse) <= tol * (1 + fabs(lse)),
			      "rest lse %g, reference %g", r[0], lse);
		for (i = 0; i < d; i++)
			ck_assert_msg(fabs(r[1 + i] - acc[i] / l) <= tol * (1 + fabs(acc[i] / l)),
				      "rest v[%u] %g, reference %g", i, r[1 + i], acc[i] / l);
	}
	free(acc);
	free(x);
	free(mean);
}

#endif
