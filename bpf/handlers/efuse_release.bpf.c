// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * RELEASE handler (kmod/ patch 0015): takes over the RELEASE of efused's own opens (the
 * kernel sends it in the background when a file's last reference goes; the closing process
 * never waits for it): it queues the open's node, fh and flags in the ring buffer
 * efuse_releases, which efused drains and carries out as it would the request (closing its
 * descriptor, counting a writer down), and ends the RELEASE in the module. When the ring is
 * full (efused is behind) the RELEASE goes up as a request. The module never shows a
 * handler a RELEASE that must undo a flock, nor one at unmount (synchronous).
 *
 * Attached directly to the raw_tp.w tracepoint efuse_handler, like efuse_getattr.bpf.c
 * (which says why there is no program array).
 */
#include "efuse_handler.bpf.h"

#define FUSE_RELEASE 18

EFUSE_HANDLER_OPCODE(FUSE_RELEASE);

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, EFUSE_RELEASE_RING_BYTES);
} efuse_releases SEC(".maps");

SEC("raw_tp.w/efuse_handler")
int efuse_release(struct bpf_raw_tracepoint_args *args)
{
	struct efuse_handler_ctx *ctx = efuse_handler_ctx(args);
	struct efuse_release_event *e;
	__u64 nodeid = ctx->in.nodeid;

	if (!efuse_handler_turn(ctx, FUSE_RELEASE) || efuse_handler_answered_twice(ctx))
		return 0;
	EFUSE_HANDLER_VARY(nodeid);
	e = bpf_ringbuf_reserve(&efuse_releases, sizeof(*e), 0);
	if (!e)
		return 0;
	e->nodeid = nodeid;
	e->fh = ctx->in.offset;
	e->flags = ctx->in.flags;
	e->release_flags = ctx->in.size;
	bpf_ringbuf_submit(e, 0);
	ctx->out.answer.nodeid = nodeid;
	ctx->out.answer.error = 0;
	ctx->out.answer.size = 0;
	ctx->out.verdict = EFUSE_HANDLER_ANSWER;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
