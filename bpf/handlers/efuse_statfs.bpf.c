// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * STATFS handler (kmod/ patch 0014): answers a STATFS from efuse_statfs_answers, the
 * struct fuse_statfs_out efused last sent for the node, while it is younger than the
 * mount's cache.statfs_timeout (the entry's expiry; efused stores none when that is 0).
 * The kernel keeps no copy of a file system's statistics, so without this every statfs(2)
 * and df reaches efused; with it, they show values at most that old, as a server that
 * cached them itself would.
 *
 * The requests of efused's own threads always go up (efuse_server_tgid): its health probe
 * asks every mount for STATFS to show that the mount's server answers, which an answer
 * from this map would not show.
 *
 * Attached directly to the raw_tp.w tracepoint efuse_handler, like efuse_getattr.bpf.c
 * (which says why there is no program array).
 */
#include "efuse_handler.bpf.h"

#define FUSE_STATFS 17

EFUSE_HANDLER_OPCODE(FUSE_STATFS);

/* The server's process (its tgid), set by efused before loading. */
const volatile __u32 efuse_server_tgid = 0;

/* nodeid -> the whole answer (struct fuse_statfs_out in data) and its expiry, from efused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EFUSE_STATFS_ANSWERS);
	__type(key, __u64);
	__type(value, struct efuse_handler_entry);
} efuse_statfs_answers SEC(".maps");

SEC("raw_tp.w/efuse_handler")
int efuse_statfs(struct bpf_raw_tracepoint_args *args)
{
	struct efuse_handler_ctx *ctx = efuse_handler_ctx(args);

	if (!efuse_handler_turn(ctx, FUSE_STATFS) || efuse_handler_answered_twice(ctx))
		return 0;
	if (efuse_server_tgid == 0 || (bpf_get_current_pid_tgid() >> 32) == efuse_server_tgid)
		return 0;
	efuse_handler_answer_node(ctx, &efuse_statfs_answers);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
