/*
 * icebench tiers, the Redis tier: pages/s and GB/s of the tier's pipelined batches (writes,
 * random reads, checksummed store gets) against redis-benchmark's SET and GET of the same value
 * size with the same pipeline depth, on the same server, in the same run.
 */
#ifndef ICE_BENCH_REMOTE_H
#define ICE_BENCH_REMOTE_H

#include <stdint.h>

#define REMOTE_NBATCH 4
#define REMOTE_MAX_REPS 20

struct remote_row {
	unsigned batch;
	/* ours: medians over reps; rb: redis-benchmark -P batch, one connection */
	double write_pps, read_pps, rb_set_rps, rb_get_rps;
	double read_ratio, write_ratio; /* median of per-pair ratios (ours / redis-benchmark) */
};

struct remote_res {
	char url[128];
	int private_server; /* 1: icebench started the server for this run */
	unsigned page_bytes, pages, reps;
	double seconds;
	unsigned nrows;
	struct remote_row rows[REMOTE_NBATCH];
	double store_get_pps; /* store_get, batch 256, through lookup + CRC-32C */
	int have_rb;          /* redis-benchmark found and parsed */
};

/* url NULL: start a private redis-server on loopback in dir (skipped with -ENOENT when
 * redis-server is not installed). */
int bench_remote(const char *url, const char *dir, double seconds, unsigned reps,
		 struct remote_res *res);

#endif
