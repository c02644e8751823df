// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Test fixture for swap tests (tests/vm guest_swap.py): a LOOKUP handler object that is
 * right in every way efused checks before loading (owner, handler ABI, opcode, gate) but
 * that the verifier refuses: it reads a map value without checking the lookup found one.
 * A swap to it must leave the handler in place and return the verifier's log.
 */
#include "efuse_handler.bpf.h"

#define FUSE_LOOKUP 1

EFUSE_HANDLER_OPCODE(FUSE_LOOKUP);

SEC("raw_tp.w/efuse_handler")
int efuse_lookup_unchecked(struct bpf_raw_tracepoint_args *args)
{
	struct efuse_handler_ctx *ctx = efuse_handler_ctx(args);
	__u32 key = FUSE_LOOKUP;
	__u32 *gate;

	if (!efuse_handler_turn(ctx, FUSE_LOOKUP))
		return 0;
	gate = bpf_map_lookup_elem(&efuse_gate, &key);
	if (*gate == 12345)	/* no NULL check: the verifier refuses this */
		ctx->out.verdict = EFUSE_HANDLER_UPCALL;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
