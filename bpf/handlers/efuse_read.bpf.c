// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * READ handler for the efuse kernel module (kmod/, patch 0011): answers a READ from the
 * mount's block cache, efuse_read_blocks (efuse_handler_maps.h says how efused fills it and
 * how a block is read safely while efused may rewrite it), when every block the read needs
 * is there, of one version of the file; otherwise the request goes up.
 *
 * READ requests fire their own writable tracepoint, efuse_handler_read, whose buffer is
 * struct efuse_handler_read_ctx: room for EFUSE_HANDLER_READ_BLOCKS whole blocks after the
 * usual head. The verifier allows only constant offsets into a tracepoint buffer, so each
 * block is copied whole, unrolled, to its fixed place (blocks[i]); the module takes the
 * bytes from in.offset % EFUSE_HANDLER_BLOCK_SIZE on, as many as out.answer.size says, and
 * checks that size against the request and the file's size as the kernel knows it.
 *
 * The data a read gets: whole blocks up to what the request needs, or up to the block
 * where the file ends (eof: that block's valid bytes are the file's last ones), so a read
 * past the end is short exactly there, as a server's reply would be.
 *
 * EFUSE_HANDLER_VARIANT (tests/vm) builds a copy that answers the same with other
 * instructions, for swap tests.
 */
#include "efuse_handler.bpf.h"

#define FUSE_READ 15
#define BS EFUSE_HANDLER_BLOCK_SIZE

EFUSE_HANDLER_OPCODE(FUSE_READ);

/* Sets of efuse_read_blocks (EFUSE_READ_WAYS slots each), set by efused before load. */
const volatile __u32 efuse_read_sets = 0;

/* efused hands every READ handler of a mount its own array (bpf_map__reuse_fd). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EFUSE_READ_WAYS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct efuse_read_block);
} efuse_read_blocks SEC(".maps");

struct efuse_read_hit {
	__u64 gen;	/* of the first block used: every other one must have it */
	__u32 valid;
	__u32 eof;
};

/* 1 KiB as 128 aligned 8-byte moves (clang inlines memcpy up to 128 stores; without the
 * alignment it would move bytes). Both sides are 8-byte aligned: blocks in the module's
 * buffer start at 8-byte offsets, and so does data in efuse_read_block. */
#define COPY_1K(d, s, k)							\
	__builtin_memcpy(__builtin_assume_aligned((d) + (k) * 1024, 8),		\
			 __builtin_assume_aligned((s) + (k) * 1024, 8), 1024)

/*
 * Copies block `index` of `nodeid` whole to `dst` (a fixed place in the module's buffer) if
 * the cache holds it, of the version hit->gen names (any when 0); 0 when it did.
 */
static __always_inline int efuse_read_copy(__u8 *dst, __u64 nodeid, __u64 index,
					   struct efuse_read_hit *hit)
{
	__u32 set = efuse_read_set(nodeid, index, efuse_read_sets);
	struct efuse_read_block *b = 0;
	__u64 g1 = 0, g2;
	__u32 w, valid, eof;

	for (w = 0; w < EFUSE_READ_WAYS; w++) {
		__u32 key = set * EFUSE_READ_WAYS + w;
		struct efuse_read_block *c = bpf_map_lookup_elem(&efuse_read_blocks, &key);

		if (!c)
			return -1;
		g1 = __sync_fetch_and_add(&c->gen, 0);	/* a full barrier */
		if (g1 != 0 && c->nodeid == nodeid && c->index == index) {
			b = c;
			break;
		}
	}
	if (!b || (hit->gen && g1 != hit->gen))
		return -1;
	valid = b->valid;
	eof = b->eof;
	COPY_1K(dst, b->data, 0);
	COPY_1K(dst, b->data, 1);
	COPY_1K(dst, b->data, 2);
	COPY_1K(dst, b->data, 3);
	g2 = __sync_fetch_and_add(&b->gen, 0);
	/* Rewritten or dropped while copied: the copy may be torn. */
	if (g2 != g1 || valid > BS)
		return -1;
	b->used = bpf_ktime_get_ns();
	hit->gen = g1;
	hit->valid = valid;
	hit->eof = eof;
	return 0;
}

SEC("raw_tp.w/efuse_handler_read")
int efuse_read(struct bpf_raw_tracepoint_args *args)
{
	struct efuse_handler_read_ctx *rctx = (struct efuse_handler_read_ctx *)args->args[0];
	struct efuse_handler_ctx *ctx = &rctx->head;
	struct efuse_read_hit hit = {};
	__u64 nodeid, first, end, avail = 0, n;
	__u32 skip, want;

	if (!efuse_handler_turn(ctx, FUSE_READ) || efuse_handler_answered_twice(ctx))
		return 0;
	if (efuse_read_sets == 0)
		return 0;
	nodeid = ctx->in.nodeid;
	EFUSE_HANDLER_VARY(nodeid);
	first = ctx->in.offset / BS;
	skip = ctx->in.offset % BS;
	want = ctx->in.size;
	end = skip + (__u64)want;	/* bytes wanted, from the start of the first block */

/* Block i of the read: done when nothing more is wanted, or the file ends in it. */
#define READ_BLOCK(i)								\
	if (end <= (__u64)(i) * BS)						\
		goto answer;							\
	if (efuse_read_copy(&rctx->blocks[(i) * BS], nodeid, first + (i), &hit))	\
		return 0;							\
	avail = (__u64)(i) * BS + hit.valid;					\
	if (hit.eof)								\
		goto answer;							\
	if (hit.valid != BS)							\
		return 0;

	READ_BLOCK(0)
	READ_BLOCK(1)
	READ_BLOCK(2)
	READ_BLOCK(3)
	READ_BLOCK(4)
	READ_BLOCK(5)
	READ_BLOCK(6)
	READ_BLOCK(7)
	READ_BLOCK(8)
	if (end > (__u64)EFUSE_HANDLER_READ_BLOCKS * BS)
		return 0;	/* more than the buffer holds */
answer:
	n = avail > skip ? avail - skip : 0;
	if (n > want)
		n = want;
	ctx->out.answer.nodeid = ctx->in.nodeid;
	ctx->out.answer.error = 0;
	ctx->out.answer.size = (__u32)n;
	ctx->out.verdict = EFUSE_HANDLER_ANSWER;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
