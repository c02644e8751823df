// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ACCESS handler (kmod/ patch 0017): answers an ACCESS with the answer efused gave the same
 * caller (uid, gid) for the same node and mask, from efuse_access_answers, while that
 * answer's slot has not expired. The kernel sends ACCESS only on mounts without
 * default_permissions (access(2), faccessat(2), chdir(2)); efused answers it by asking the
 * backing file system with the caller's fsuid and fsgid, so the answer depends on the
 * caller's uid and gid, the mask and the node's state, which efused drops the entry with.
 *
 * Attached directly to the raw_tp.w tracepoint efuse_handler, like efuse_getattr.bpf.c
 * (which says why there is no program array).
 */
#include "efuse_handler.bpf.h"

#define FUSE_ACCESS 34

EFUSE_HANDLER_OPCODE(FUSE_ACCESS);

/* nodeid -> up to EFUSE_ACCESS_SLOTS answers (struct efuse_access_slot in data), from efused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EFUSE_ACCESS_ANSWERS);
	__type(key, __u64);
	__type(value, struct efuse_handler_entry);
} efuse_access_answers SEC(".maps");

SEC("raw_tp.w/efuse_handler")
int efuse_access(struct bpf_raw_tracepoint_args *args)
{
	struct efuse_handler_ctx *ctx = efuse_handler_ctx(args);
	const struct efuse_handler_entry *e;
	const struct efuse_access_slot *slot;
	__u64 nodeid, now;
	__u32 i, n;

	if (!efuse_handler_turn(ctx, FUSE_ACCESS) || efuse_handler_answered_twice(ctx))
		return 0;
	nodeid = ctx->in.nodeid;
	EFUSE_HANDLER_VARY(nodeid);
	e = bpf_map_lookup_elem(&efuse_access_answers, &nodeid);
	now = bpf_ktime_get_ns();
	if (!e || now >= e->expires)
		return 0;
	n = e->answer.size / sizeof(*slot);
	for (i = 0; i < EFUSE_ACCESS_SLOTS && i < n; i++) {
		slot = (const struct efuse_access_slot *)e->answer.data + i;
		if (slot->uid != ctx->in.uid || slot->gid != ctx->in.gid ||
		    slot->mask != ctx->in.flags || now >= slot->expires)
			continue;
		ctx->out.answer.nodeid = nodeid;
		ctx->out.answer.error = slot->error;
		ctx->out.answer.size = 0;
		ctx->out.verdict = EFUSE_HANDLER_ANSWER;
		break;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
