#include "topo.h"

#include <errno.h>
#include <hwloc.h>
#include <numa.h>
#include <numaif.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>

static pthread_once_t topo_once_ctl = PTHREAD_ONCE_INIT;
static int topo_gpu_node = -1;

/* The first NVIDIA display/3D controller's nearest NUMA node, as hwloc sees the PCI tree. */
static void topo_scan(void)
{
	hwloc_topology_t topo;
	hwloc_obj_t dev = NULL;

	if (hwloc_topology_init(&topo) < 0)
		return;
	/* The Linux backend lists PCI devices from sysfs; the libpciaccess plugin ("pci") would
	 * do the same, slower, and leaks on every load. */
	hwloc_topology_set_components(topo, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "pci");
	hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
	if (hwloc_topology_load(topo) < 0)
		goto out;
	while ((dev = hwloc_get_next_pcidev(topo, dev)) != NULL) {
		hwloc_obj_t anc;

		if (dev->attr->pcidev.vendor_id != 0x10de ||
		    (dev->attr->pcidev.class_id >> 8) != 0x03)
			continue;
		anc = hwloc_get_non_io_ancestor_obj(topo, dev);
		/* nodesets hold OS node numbers, the ones libnuma takes. */
		if (anc && anc->nodeset && !hwloc_bitmap_iszero(anc->nodeset)) {
			topo_gpu_node = hwloc_bitmap_first(anc->nodeset);
			break;
		}
	}
out:
	hwloc_topology_destroy(topo);
}

int topo_nodes(void)
{
	if (numa_available() < 0)
		return 0;
	return numa_num_configured_nodes();
}

int topo_pick_node(enum topo_reason *ret_why)
{
	int cpu, node;

	if (numa_available() < 0) {
		*ret_why = TOPO_NONUMA;
		return -1;
	}
	pthread_once(&topo_once_ctl, topo_scan);
	if (topo_gpu_node >= 0) {
		*ret_why = TOPO_GPU;
		return topo_gpu_node;
	}
	cpu = sched_getcpu();
	node = cpu >= 0 ? numa_node_of_cpu(cpu) : -1;
	*ret_why = TOPO_LOCAL;
	return node >= 0 ? node : 0;
}

int topo_bind(void *p, size_t len, int node)
{
	unsigned long mask[16] = { 0 };

	if (numa_available() < 0)
		return -ENOSYS;
	if (node < 0 || node >= (int)(sizeof(mask) * 8) || node > numa_max_node())
		return -EINVAL;
	mask[node / (8 * sizeof(unsigned long))] |= 1ul << (node % (8 * sizeof(unsigned long)));
	if (mbind(p, len, MPOL_BIND, mask, sizeof(mask) * 8, 0) < 0)
		return -errno;
	return 0;
}

const char *topo_reason_name(enum topo_reason why)
{
	switch (why) {
	case TOPO_CONFIG:
		return "config";
	case TOPO_GPU:
		return "gpu";
	case TOPO_LOCAL:
		return "local";
	default:
		return "none";
	}
}
