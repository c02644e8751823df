// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * OPEN handler (kmod/ patch 0012): answers a read-only open of a file efused serves in
 * FUSE passthrough mode from efuse_open_answers, the struct fuse_open_out efused stored for
 * the node: fh 0, FOPEN_PASSTHROUGH and the backing id efused keeps registered for it.
 * Every other open goes up: for writing (efused clears set-ID bits and counts writers at
 * such opens), with O_TRUNC, and opens of nodes without an entry.
 *
 * The module checks the answer (kmod/README.md, patch 0012): the backing id must name a
 * backing file efused registered on this connection and itself opened this node with, the
 * connection must have default_permissions (the kernel checked the caller's access before
 * sending OPEN), and the open gets the module's own fh (EFUSE_HANDLER_KERNEL_FH), whose
 * RELEASE the module ends itself. A refused answer is an ordinary upcall, counted.
 *
 * Attached directly to the raw_tp.w tracepoint efuse_handler, like efuse_getattr.bpf.c
 * (which says why there is no program array).
 */
#include "efuse_handler.bpf.h"

#define FUSE_OPEN 14
#define EFUSE_O_ACCMODE 00000003
#define EFUSE_O_RDONLY 00000000
#define EFUSE_O_TRUNC 00001000

EFUSE_HANDLER_OPCODE(FUSE_OPEN);

/* nodeid -> the whole answer (struct fuse_open_out in data), from efused; never expires. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EFUSE_OPEN_ANSWERS);
	__type(key, __u64);
	__type(value, struct efuse_handler_entry);
} efuse_open_answers SEC(".maps");

SEC("raw_tp.w/efuse_handler")
int efuse_open(struct bpf_raw_tracepoint_args *args)
{
	struct efuse_handler_ctx *ctx = efuse_handler_ctx(args);

	if (!efuse_handler_turn(ctx, FUSE_OPEN) || efuse_handler_answered_twice(ctx))
		return 0;
	if ((ctx->in.flags & EFUSE_O_ACCMODE) != EFUSE_O_RDONLY ||
	    (ctx->in.flags & EFUSE_O_TRUNC))
		return 0;
	efuse_handler_answer_node(ctx, &efuse_open_answers);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
