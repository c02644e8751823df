// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Counts the lookups the kernel took from positive LOOKUP answers, per nodeid: the module
 * fires efuse_handler_entry(conn, parent, nodeid) once for each positive entry it took
 * from a handler (kmod/, patch 0008), while it holds the inode, so the count is here
 * before any FORGET covering that lookup reaches efused. efused reads a node's counter
 * before it applies a FORGET for it and folds what is new into its node table (the
 * contract in service/src/fs/node_table.h), and deletes the counter when it drops the
 * node. The counters only grow; efused remembers how much of each it has taken.
 *
 * Key 0 (never a node) counts lookups that found no room in the map: efused stores
 * positive answers for fewer nodes than the map holds, so it must stay 0.
 *
 * A plain raw tracepoint: it only reads its scalar arguments. Not a handler: it answers
 * nothing, and is loaded with the handlers, one copy per mount (efuse_conn).
 */
#include "efuse_handler.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EFUSE_ENTRY_COUNTERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, __u64);
} efuse_entry_lookups SEC(".maps");

SEC("raw_tp/efuse_handler_entry")
int efuse_handler_entry(struct bpf_raw_tracepoint_args *args)
{
	__u32 conn = args->args[0];
	__u64 nodeid = args->args[2];
	__u64 zero = 0;
	__u64 *n;

	if (!efuse_handler_mine(conn) || nodeid == 0)
		return 0;
	n = bpf_map_lookup_elem(&efuse_entry_lookups, &nodeid);
	if (!n) {
		/* EEXIST: another CPU created it meanwhile; E2BIG: full. */
		bpf_map_update_elem(&efuse_entry_lookups, &nodeid, &zero, BPF_NOEXIST);
		n = bpf_map_lookup_elem(&efuse_entry_lookups, &nodeid);
	}
	if (!n) {
		nodeid = 0;
		n = bpf_map_lookup_elem(&efuse_entry_lookups, &nodeid);
		if (!n) {
			bpf_map_update_elem(&efuse_entry_lookups, &nodeid, &zero, BPF_NOEXIST);
			n = bpf_map_lookup_elem(&efuse_entry_lookups, &nodeid);
		}
	}
	if (n)
		__sync_fetch_and_add(n, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
