// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * LOOKUP handler for the efuse kernel module's attach point (kmod/, patches 0002-0008):
 * answers a LOOKUP from the answer user space stored for (parent nodeid, name) in
 * efuse_lookup_answers, and lets every other request go up. The module takes negative
 * answers (-ENOENT, or an entry with nodeid 0 cached for entry_valid) and positive entries
 * for an inode the kernel holds already (patch 0008); it reports each positive entry it
 * takes on the tracepoint efuse_handler_entry, where efuse_entry_counts.bpf.c counts it for
 * efused, whichever LOOKUP handler answered, so lookup counts stay exact across a swap.
 *
 * Attached directly to the raw_tp.w tracepoint efuse_handler, like efuse_getattr.bpf.c
 * (which says why there is no program array). EFUSE_HANDLER_VARIANT (tests/vm) builds a copy
 * that answers the same with other instructions, for swap tests.
 */
#include "efuse_handler.bpf.h"

#define FUSE_LOOKUP 1

EFUSE_HANDLER_OPCODE(FUSE_LOOKUP);

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct efuse_handler_name_key);
	__type(value, struct efuse_handler_entry);
} efuse_lookup_answers SEC(".maps");

/* Allocated as used: most mounts mark few directories. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EFUSE_COMPLETE_DIRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct efuse_handler_entry);
} efuse_complete_dirs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EFUSE_DIR_NAMES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct efuse_handler_name_key);
	__type(value, __u32);
} efuse_dir_names SEC(".maps");

SEC("raw_tp.w/efuse_handler")
int efuse_lookup(struct bpf_raw_tracepoint_args *args)
{
	struct efuse_handler_ctx *ctx = efuse_handler_ctx(args);
	struct efuse_handler_name_key key;

	if (!efuse_handler_turn(ctx, FUSE_LOOKUP) || ctx->in.namelen >= EFUSE_HANDLER_NAME_MAX ||
	    efuse_handler_answered_twice(ctx))
		return 0;
	key.parent = ctx->in.nodeid;
	EFUSE_HANDLER_VARY(key.parent);
	__builtin_memcpy(key.name, ctx->in.name, sizeof(key.name));  /* zero-filled */
	efuse_handler_answer_from(ctx, &efuse_lookup_answers, &key);
	if (ctx->out.verdict == EFUSE_HANDLER_ANSWER ||
	    bpf_map_lookup_elem(&efuse_dir_names, &key))
		return 0;
	efuse_handler_answer_from(ctx, &efuse_complete_dirs, &key.parent);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
