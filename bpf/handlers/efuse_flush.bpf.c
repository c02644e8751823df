// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * FLUSH handler (kmod/ patches 0012, 0013): answers the FLUSH of an open a handler answered
 * (in.flags EFUSE_HANDLER_FLUSH_KERNEL_OPEN), and of an open efused answered in passthrough
 * mode whose backing file has no flush method (EFUSE_HANDLER_FLUSH_PASSTHROUGH: a CREATE or
 * an open for writing; efused saw none of its data and its close of a duplicate of its
 * descriptor would report nothing), when efused stored an entry for the node in
 * efuse_flush_answers: it does so with its first passthrough OPEN or CREATE reply for the
 * node, and drops it for good before it replies to any lock request on the node (a POSIX
 * lock or flock taken through efused is released by efused at FLUSH). Every other FLUSH goes
 * up: those of opens efused serves without passthrough carry its handle, whose data it may
 * have to report on.
 *
 * Attached directly to the raw_tp.w tracepoint efuse_handler, like efuse_getattr.bpf.c
 * (which says why there is no program array).
 */
#include "efuse_handler.bpf.h"

#define FUSE_FLUSH 25

EFUSE_HANDLER_OPCODE(FUSE_FLUSH);

/* nodeid -> the whole answer (no body: error 0, size 0), from efused; never expires. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EFUSE_OPEN_ANSWERS);
	__type(key, __u64);
	__type(value, struct efuse_handler_entry);
} efuse_flush_answers SEC(".maps");

SEC("raw_tp.w/efuse_handler")
int efuse_flush(struct bpf_raw_tracepoint_args *args)
{
	struct efuse_handler_ctx *ctx = efuse_handler_ctx(args);

	if (!efuse_handler_turn(ctx, FUSE_FLUSH) || efuse_handler_answered_twice(ctx))
		return 0;
	if (!(ctx->in.flags & (EFUSE_HANDLER_FLUSH_KERNEL_OPEN | EFUSE_HANDLER_FLUSH_PASSTHROUGH)))
		return 0;
	efuse_handler_answer_node(ctx, &efuse_flush_answers);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
