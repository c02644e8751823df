/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * GETXATTR and LISTXATTR handlers for the efuse kernel module's attach point (kmod/,
 * patches 0002-0010): efuse_getxattr.bpf.c and efuse_listxattr.bpf.c, one object per opcode
 * like every handler (so each is listed, swapped and counted on its own, docs/bpf.md *Handler
 * hot swap*), answering from the one map both declare: efuse_xattr_answers, which a mount's
 * objects share by name, so both read what user space stored for (nodeid, name), name ""
 * for the node's list (the kernel never asks for an empty name). Every other request goes
 * up.
 *
 * An entry is either an error answer (-ENODATA: the node has no such attribute), used as
 * it is, or the whole value (the list) in data with its length in size. The request's
 * size picks the reply, as a server's would: 0 asks for the length (a struct
 * fuse_getxattr_out), a buffer too small gets -ERANGE, a big enough one the bytes. The
 * module checks every answer (kmod/README.md); the kernel caches no extended attribute,
 * so without a handler every getxattr(2), and the security.capability check the kernel
 * makes before each write and chown, reaches efused.
 *
 * Attached directly to the raw_tp.w tracepoint efuse_handler, like efuse_getattr.bpf.c
 * (which says why there is no program array). EFUSE_HANDLER_VARIANT (tests/vm) builds copies
 * that answer the same with other instructions, for swap tests.
 */
#ifndef EFUSE_XATTR_BPF_H
#define EFUSE_XATTR_BPF_H

#include "efuse_handler.bpf.h"

#define FUSE_GETXATTR 22
#define FUSE_LISTXATTR 23
#define ERANGE 34

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct efuse_handler_name_key);
	__type(value, struct efuse_handler_entry);
} efuse_xattr_answers SEC(".maps");

/* The handler of `op` (FUSE_GETXATTR or FUSE_LISTXATTR). */
static __always_inline int efuse_xattr_handler(struct efuse_handler_ctx *ctx, __u32 op)
{
	const struct efuse_handler_entry *e;
	struct efuse_handler_name_key key;
	__u32 len;

	if (!efuse_handler_turn(ctx, op) || efuse_handler_answered_twice(ctx))
		return 0;
	key.parent = ctx->in.nodeid;
	EFUSE_HANDLER_VARY(key.parent);
	if (op == FUSE_GETXATTR) {
		if (ctx->in.namelen == 0 || ctx->in.namelen >= EFUSE_HANDLER_NAME_MAX)
			return 0;
		__builtin_memcpy(key.name, ctx->in.name, sizeof(key.name));  /* zero-filled */
	} else {
		__builtin_memset(key.name, 0, sizeof(key.name));
	}
	e = bpf_map_lookup_elem(&efuse_xattr_answers, &key);
	if (!e || bpf_ktime_get_ns() >= e->expires)
		return 0;
	len = e->answer.size;
	if (e->answer.error || (ctx->in.size != 0 && ctx->in.size >= len)) {
		__builtin_memcpy(&ctx->out.answer, &e->answer, sizeof(e->answer));
	} else if (ctx->in.size == 0) {
		/* struct fuse_getxattr_out { __u32 size; __u32 padding; } */
		ctx->out.answer.nodeid = ctx->in.nodeid;
		ctx->out.answer.error = 0;
		ctx->out.answer.size = 8;
		*(__u32 *)&ctx->out.answer.data[0] = len;
		*(__u32 *)&ctx->out.answer.data[4] = 0;
	} else {
		ctx->out.answer.nodeid = ctx->in.nodeid;
		ctx->out.answer.error = -ERANGE;
		ctx->out.answer.size = 0;
	}
	ctx->out.verdict = EFUSE_HANDLER_ANSWER;
	return 0;
}

#endif /* EFUSE_XATTR_BPF_H */
