/*
 * Where the DRAM pool goes: the only code that talks to hwloc (topology) and libnuma
 * (placement). Everything else sees node numbers.
 */
#ifndef ICE_TIERS_DRAM_TOPO_H
#define ICE_TIERS_DRAM_TOPO_H

#include <stddef.h>

enum topo_reason {
	TOPO_CONFIG = 0, /* the caller asked for a node */
	TOPO_GPU = 1,    /* the node nearest an NVIDIA GPU (hwloc PCI locality) */
	TOPO_LOCAL = 2,  /* no GPU found: the node of the CPU that opened the tier */
	TOPO_NONUMA = 3, /* no NUMA support in this kernel: no placement */
};

/* The node for the pool and why (cached after the first call; hwloc's PCI scan is slow). */
int topo_pick_node(enum topo_reason *ret_why);
/* Binds [p, p+len) to node before it is touched; 0 or -errno (-ENOSYS without NUMA). */
int topo_bind(void *p, size_t len, int node);
/* NUMA nodes with memory (1 on a one-node machine, 0 without NUMA support). */
int topo_nodes(void);
const char *topo_reason_name(enum topo_reason why);

#endif
