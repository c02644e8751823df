/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What every handler in bpf/handlers/ does once it has a key: answer with the map's
 * answer for it, whole, while it has not expired, or leave the verdict alone so the
 * request goes up. BPF side only.
 */
#ifndef EFUSE_HANDLER_BPF_H
#define EFUSE_HANDLER_BPF_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "efuse_handler_maps.h"

/*
 * The connection this copy of the handler answers for (in.conn, the number of
 * /sys/fs/efuse/connections/<conn>): efused sets it before loading, one copy
 * with maps of its own per mount. 0, as in an object loaded as it is (bpftool),
 * answers for every connection.
 */
const volatile __u32 efuse_conn = 0;

static __always_inline int efuse_handler_mine(__u32 conn)
{
	return efuse_conn == 0 || conn == efuse_conn;
}

/* The module's buffer: the tracepoint's first argument. */
static __always_inline struct efuse_handler_ctx *
efuse_handler_ctx(struct bpf_raw_tracepoint_args *args)
{
	return (struct efuse_handler_ctx *)args->args[0];
}

static __always_inline void efuse_handler_answer_from(struct efuse_handler_ctx *ctx,
						      void *answers, const void *key)
{
	const struct efuse_handler_entry *e = bpf_map_lookup_elem(answers, key);

	if (!e || bpf_ktime_get_ns() >= e->expires)
		return;
	__builtin_memcpy(&ctx->out.answer, &e->answer, sizeof(e->answer));
	ctx->out.verdict = EFUSE_HANDLER_ANSWER;
}

#endif /* EFUSE_HANDLER_BPF_H */
