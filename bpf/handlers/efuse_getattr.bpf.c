// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * GETATTR handler for the efuse kernel module's attach point (kmod/, patch 0002):
 * answers a GETATTR from the answer user space stored for the node in
 * efuse_getattr_answers, and lets every other request go up.
 *
 * Attached to the module's writable raw tracepoint efuse_handler (raw_tp.w): the first
 * argument is the module's struct efuse_handler_ctx (efuse_handler.h), and the verifier
 * refuses to attach a program that reads or writes past its end. The answer is copied
 * whole; the module checks it (nodeid, size, attributes) and sends the request up when it
 * is wrong, so a stale or malformed map entry costs an upcall, never a wrong reply.
 *
 * No program array: the module's buffer bound is checked against the attached program
 * only (6.12's bpf_raw_tp_link_attach compares that program's max_tp_access with the
 * tracepoint's writable size; a prog array accepts any raw_tp.w program whatever it
 * touches), so a tail-called handler would not be bounded. Each handler attaches itself
 * and tests the opcode first.
 *
 * EFUSE_HANDLER_VARIANT (tests/vm) builds a copy that answers the same with other
 * instructions, for swap tests (efuse_handler.bpf.h).
 *
 * Needs no kernel headers beyond the UAPI: the buffer is the module's own fixed layout,
 * with nothing to relocate.
 */
#include "efuse_handler.bpf.h"

#define FUSE_GETATTR 3

EFUSE_HANDLER_OPCODE(FUSE_GETATTR);

/* nodeid -> the whole answer (struct fuse_attr_out in data) and its expiry, from efused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct efuse_handler_entry);
} efuse_getattr_answers SEC(".maps");

SEC("raw_tp.w/efuse_handler")
int efuse_getattr(struct bpf_raw_tracepoint_args *args)
{
	struct efuse_handler_ctx *ctx = efuse_handler_ctx(args);

	if (!efuse_handler_turn(ctx, FUSE_GETATTR) || efuse_handler_answered_twice(ctx))
		return 0;
	efuse_handler_answer_node(ctx, &efuse_getattr_answers);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
