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
 * The handler ABI this object was built for (efuse_handler.h). efused reads it from the
 * object before loading it and refuses an object built for another version.
 * EFUSE_HANDLER_BUILT_FOR_ABI pins another one (tests/vm builds such an object).
 */
#ifndef EFUSE_HANDLER_BUILT_FOR_ABI
#define EFUSE_HANDLER_BUILT_FOR_ABI EFUSE_HANDLER_ABI_VERSION
#endif
const volatile __u32 efuse_handler_abi = EFUSE_HANDLER_BUILT_FOR_ABI;

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

/*
 * Hot swap (efused replaces one opcode's handler on a live mount, docs/bpf.md): which of
 * the mount's loaded copies answers each opcode. efused hands every copy of a mount the
 * same gate map before loading it: at key opcode, the efuse_slot of the copy that answers
 * (0: none). A swap attaches the new copy, waits for an RCU grace period, stores its slot
 * here with one aligned 4-byte store, then detaches the old copy. The first copy that looks
 * at a request notes in out.turn what the gate said, and every copy of the mount that sees
 * the same request goes by that note: whatever the order the tracepoint runs them in, one
 * request is looked at by exactly one of them (old or new), never by none and never by both.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EFUSE_HANDLER_OPCODE_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u32);
} efuse_gate SEC(".maps");

/* This copy's slot, set by efused before loading; 0 (loaded as it is): no gate. */
const volatile __u32 efuse_slot = 0;

/* out.turn when the gate named no copy for the request's opcode. */
#define EFUSE_HANDLER_NO_TURN 0xffffffffu

/*
 * The opcode an object answers, for efused to check against the table entry it is loaded
 * for: one EFUSE_HANDLER_OPCODE(FUSE_X); per handler object.
 */
#define EFUSE_HANDLER_OPCODE(op) const volatile __u32 efuse_handler_opcode = (op)

/* The module's buffer: the tracepoint's first argument. */
static __always_inline struct efuse_handler_ctx *
efuse_handler_ctx(struct bpf_raw_tracepoint_args *args)
{
	return (struct efuse_handler_ctx *)args->args[0];
}

/*
 * Whether this copy answers the request: it is for `opcode` on this copy's connection, and
 * the mount's gate gives this copy the turn (see efuse_gate).
 */
static __always_inline int efuse_handler_turn(struct efuse_handler_ctx *ctx, __u32 opcode)
{
	__u32 key = opcode, turn, *gate;

	if (ctx->in.opcode != opcode || !efuse_handler_mine(ctx->in.conn))
		return 0;
	if (efuse_slot == 0)
		return 1;
	turn = ctx->out.turn;
	if (turn == 0) {
		gate = bpf_map_lookup_elem(&efuse_gate, &key);
		turn = gate && *gate ? *gate : EFUSE_HANDLER_NO_TURN;
		ctx->out.turn = turn;
	}
	return turn == efuse_slot;
}

/*
 * tests/vm builds (EFUSE_HANDLER_TATTLE): a copy that finds the request already answered by
 * another copy makes the module refuse the answer (bad_verdict), so a request two handlers
 * answered during a swap shows in efuse_kernel_handler_fallbacks_total. Never shipped.
 */
static __always_inline int efuse_handler_answered_twice(struct efuse_handler_ctx *ctx)
{
#ifdef EFUSE_HANDLER_TATTLE
	if (ctx->out.verdict != EFUSE_HANDLER_UPCALL) {
		ctx->out.verdict = 2;
		return 1;
	}
#endif
	return 0;
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

/*
 * tests/vm builds copies of the handlers with -DEFUSE_HANDLER_VARIANT=N (swap_*_variant.bpf.o,
 * tests/vm/CMakeLists.txt): the same answers through other instructions, so the swap tests
 * can tell one program from another. EFUSE_HANDLER_VARY(x) leaves the integer x as it is,
 * through instructions only such a copy has.
 */
#ifdef EFUSE_HANDLER_VARIANT
#define EFUSE_HANDLER_VARY(x)					\
	do {							\
		(x) += EFUSE_HANDLER_VARIANT;			\
		asm volatile("" : "+r"(x));			\
		(x) -= EFUSE_HANDLER_VARIANT;			\
	} while (0)
#else
#define EFUSE_HANDLER_VARY(x) do { } while (0)
#endif

/* The answer of a map keyed by the request's nodeid (GETATTR, OPEN, FLUSH). */
static __always_inline void efuse_handler_answer_node(struct efuse_handler_ctx *ctx,
						      void *answers)
{
	__u64 nodeid = ctx->in.nodeid;

	EFUSE_HANDLER_VARY(nodeid);
	efuse_handler_answer_from(ctx, answers, &nodeid);
}

#endif /* EFUSE_HANDLER_BPF_H */
