// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * LOOKUP handler for the efuse kernel module's attach point (kmod/, patches 0002-0005):
 * answers a LOOKUP from the answer user space stored for (parent nodeid, name) in
 * efuse_lookup_answers, and lets every other request go up. The module takes negative
 * answers only so far (-ENOENT, or an entry with nodeid 0 cached for entry_valid); it
 * refuses positive entries, which would change lookup counts behind the server's back.
 *
 * Attached directly to the raw_tp.w tracepoint efuse_handler, like efuse_getattr.bpf.c
 * (which says why there is no program array).
 */
#include "efuse_handler.bpf.h"

#define FUSE_LOOKUP 1

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct efuse_handler_name_key);
	__type(value, struct efuse_handler_entry);
} efuse_lookup_answers SEC(".maps");

SEC("raw_tp.w/efuse_handler")
int efuse_lookup(struct bpf_raw_tracepoint_args *args)
{
	struct efuse_handler_ctx *ctx = efuse_handler_ctx(args);
	struct efuse_handler_name_key key;

	if (ctx->in.opcode != FUSE_LOOKUP || ctx->in.namelen >= EFUSE_HANDLER_NAME_MAX ||
	    !efuse_handler_mine(ctx->in.conn))
		return 0;
	key.parent = ctx->in.nodeid;
	__builtin_memcpy(key.name, ctx->in.name, sizeof(key.name));  /* zero-filled */
	efuse_handler_answer_from(ctx, &efuse_lookup_answers, &key);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
