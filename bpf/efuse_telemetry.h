/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The one header the telemetry BPF programs (efuse_telemetry.bpf.c) and efused's C++
 * loader (service/src/bpf/) share, the libbpf-tools way: fixed-width types, explicit
 * padding, no second hand-written copy of any struct on either side. The loader refuses to
 * load when a map's value size in the compiled object disagrees with sizeof() here.
 *
 * Plain C: the BPF side includes it after vmlinux.h (which defines __u32/__u64); user
 * space gets the same types from <linux/types.h>.
 */
#ifndef EFUSE_BPF_TELEMETRY_H
#define EFUSE_BPF_TELEMETRY_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Connection id: the FUSE connection's device number in the kernel's own encoding
 * (fuse_conn.dev == the super block's s_dev, MKDEV(major, minor) = major << 20 | minor).
 * /sys/fs/fuse/connections/<minor> and the "major:minor" field of /proc/self/mountinfo
 * name the same thing. */
#define EFUSE_BPF_MINOR_BITS 20
#define EFUSE_BPF_MINOR_MASK ((1U << EFUSE_BPF_MINOR_BITS) - 1)

/* Opcodes at or above this are folded into EFUSE_BPF_OPCODE_SLOTS - 1 (CUSE_INIT is 4096)
 * so the (connection, opcode) key space stays bounded; user space names that slot
 * "unknown" like every opcode efused has no name for. */
#define EFUSE_BPF_OPCODE_SLOTS 64

/* log2 latency histogram: slot i counts durations d (ns) with floor(log2(d)) == i, i.e.
 * d in [2^i, 2^(i+1)); slot 0 also takes d == 0; the last slot takes everything from
 * 2^(SLOTS-1) ns (~34 s) up. */
#define EFUSE_BPF_LATENCY_SLOTS 36

/* Queue id of requests that travelled over /dev/fuse (req->ring_queue == NULL). */
#define EFUSE_BPF_QUEUE_CLASSIC 0xffffffffU

/* Map sizes. */
#define EFUSE_BPF_MAX_INFLIGHT 16384  /* requests between send and end, host-wide */
#define EFUSE_BPF_MAX_OP_KEYS 4096    /* (connection, opcode) pairs */
#define EFUSE_BPF_MAX_QUEUE_KEYS 1024 /* (connection, queue) pairs */
#define EFUSE_BPF_MAX_CONNS 256       /* connections with context switch counters */
#define EFUSE_BPF_MAX_TASKS 16384     /* threads seen as FUSE clients or servers */

/* ---- X-macros: each list declares a struct's counters once; the C++ side builds its
 * metric names, help texts and aggregation loops from the same lists. ---- */

/* Per (connection, opcode) counters, besides the latency histogram. */
#define EFUSE_BPF_OP_COUNTERS(X)                                                  \
	X(requests, "requests the kernel sent to the FUSE server (upcalls)")       \
	X(errors, "requests the server answered with an error (out.h.error != 0)") \
	X(latency_sum_ns, "sum of send-to-end durations in nanoseconds")

/* Per (connection, queue) counters, besides the latency histogram. */
#define EFUSE_BPF_QUEUE_COUNTERS(X)                                        \
	X(requests, "requests completed on this queue")                     \
	X(latency_sum_ns, "sum of send-to-end durations in nanoseconds")

/* Per connection context switch counters: X(field, side, kind). */
#define EFUSE_BPF_CTXSW_COUNTERS(X)                   \
	X(daemon_voluntary, "daemon", "voluntary")     \
	X(daemon_involuntary, "daemon", "involuntary") \
	X(client_voluntary, "client", "voluntary")     \
	X(client_involuntary, "client", "involuntary")

/* The programs' own health, one per-CPU array slot: X(field, reason label, help). */
#define EFUSE_BPF_HEALTH_COUNTERS(X)                                                      \
	X(inflight_full, "inflight_full",                                                  \
	  "a request was not tracked because the in-flight map was full")                  \
	X(duplicate_send, "duplicate_send",                                                \
	  "a request was sent at the address of one still tracked as in flight (freed "     \
	  "without reaching fuse_request_end): the older entry was replaced")              \
	X(unmatched_end, "unmatched_end",                                                  \
	  "a request ended that was not seen being sent (sent before the programs attached)") \
	X(stats_full, "stats_full",                                                        \
	  "a counter could not be updated because its statistics map was full")

/* ---- Map keys and values ---- */

/* Request key: the kernel's struct fuse_req * itself. It exists before fuse_request_send
 * fires on every kernel that has the tracepoint and stays the same until fuse_request_end
 * (the request is freed after it), whereas in.h.unique is assigned only after
 * fuse_request_send on 6.12 (every send there shows unique 0) and after it in newer ones.
 * A fuse_req freed without reaching fuse_request_end (a killed client's request that was
 * still queued) leaves a stale entry that the next request at that address replaces.
 *
 * inflight_slots: BPF_MAP_TYPE_ARRAY (mmapable), key __u32 index, value efuse_inflight_slot.
 * Requests between send and end, at the index their address hashes to
 * (efuse_inflight_index), claimed and released with atomic exchanges: no locks on the
 * request path. A request whose slot is taken goes to the inflight hash below instead. */
#define EFUSE_BPF_INFLIGHT_SLOTS 4096 /* a power of two */
#define EFUSE_BPF_INFLIGHT_SLOT_BITS 12
#define EFUSE_BPF_SLOT_FREE 0ULL
#define EFUSE_BPF_SLOT_BUSY 1ULL /* being filled or emptied; kernel addresses are never 0, 1 */

struct efuse_req_start {
	__u64 start_ns;   /* bpf_ktime_get_ns() at fuse_request_send */
	__u32 opcode;     /* clamped to EFUSE_BPF_OPCODE_SLOTS - 1 */
	__u32 client_tid; /* thread that sent it; 0 when the sender is a known server thread */
	__u32 conn;       /* connection id */
	__u32 pad;
};

struct efuse_inflight_slot {
	__u64 req; /* EFUSE_BPF_SLOT_FREE, EFUSE_BPF_SLOT_BUSY or the request's address */
	struct efuse_req_start start;
};

static inline __u32 efuse_inflight_index(__u64 req)
{
	/* fuse_reqs come from one slab cache, a few hundred bytes apart: mix every bit of the
	 * address (murmur3's 64-bit finalizer) so that neighbours spread like random keys. */
	req ^= req >> 33;
	req *= 0xff51afd7ed558ccdULL;
	req ^= req >> 33;
	return (__u32)(req >> (64 - EFUSE_BPF_INFLIGHT_SLOT_BITS));
}

/* inflight: BPF_MAP_TYPE_HASH, key efuse_req_key, value efuse_req_start: requests whose
 * slot was taken by another one still in flight. */
struct efuse_req_key {
	__u64 req;
};

/* op_stats: BPF_MAP_TYPE_PERCPU_HASH, key efuse_op_key, value efuse_op_stats. */
struct efuse_op_key {
	__u32 conn;
	__u32 opcode;
};

struct efuse_op_stats {
#define EFUSE_BPF_FIELD(name, help) __u64 name;
	EFUSE_BPF_OP_COUNTERS(EFUSE_BPF_FIELD)
#undef EFUSE_BPF_FIELD
	__u64 latency[EFUSE_BPF_LATENCY_SLOTS];
};

/* queue_stats: BPF_MAP_TYPE_PERCPU_HASH, key efuse_queue_key, value efuse_queue_stats. */
struct efuse_queue_key {
	__u32 conn;
	__u32 qid; /* io_uring queue id (fuse_ring_queue.qid) or EFUSE_BPF_QUEUE_CLASSIC */
};

struct efuse_queue_stats {
#define EFUSE_BPF_FIELD(name, help) __u64 name;
	EFUSE_BPF_QUEUE_COUNTERS(EFUSE_BPF_FIELD)
#undef EFUSE_BPF_FIELD
	__u64 latency[EFUSE_BPF_LATENCY_SLOTS];
};

/* ctxsw_stats: BPF_MAP_TYPE_PERCPU_HASH, key __u32 conn, value efuse_ctxsw_stats. */
struct efuse_ctxsw_stats {
#define EFUSE_BPF_FIELD(name, side, kind) __u64 name;
	EFUSE_BPF_CTXSW_COUNTERS(EFUSE_BPF_FIELD)
#undef EFUSE_BPF_FIELD
};

/* tasks: BPF_MAP_TYPE_LRU_HASH, key __u32 thread id, value efuse_task. A thread is a
 * "daemon" thread of daemon_conn once it completed a request of that connection (the
 * server writes its reply in its own context, so fuse_request_end runs there); it is a
 * "client" of client_conn while it has requests of that connection outstanding. */
#define EFUSE_BPF_TASK_DAEMON 1U

struct efuse_task {
	__u32 flags;       /* EFUSE_BPF_TASK_* */
	__u32 daemon_conn; /* valid with EFUSE_BPF_TASK_DAEMON */
	__u32 client_conn; /* connection of the latest request the thread sent */
	__u32 outstanding; /* requests it sent that have not ended yet */
};

/* health: BPF_MAP_TYPE_PERCPU_ARRAY, one element, value efuse_health. */
struct efuse_health {
#define EFUSE_BPF_FIELD(name, reason, help) __u64 name;
	EFUSE_BPF_HEALTH_COUNTERS(EFUSE_BPF_FIELD)
#undef EFUSE_BPF_FIELD
};

#ifdef __cplusplus
/* The kernel copies map values byte for byte: pin every layout both sides rely on. */
static_assert(sizeof(struct efuse_req_key) == 8, "efuse_req_key layout");
static_assert(sizeof(struct efuse_req_start) == 24, "efuse_req_start layout");
static_assert(sizeof(struct efuse_inflight_slot) == 32, "efuse_inflight_slot layout");
static_assert(EFUSE_BPF_INFLIGHT_SLOTS == 1 << EFUSE_BPF_INFLIGHT_SLOT_BITS,
	      "EFUSE_BPF_INFLIGHT_SLOTS is 2^EFUSE_BPF_INFLIGHT_SLOT_BITS");
static_assert(sizeof(struct efuse_op_key) == 8, "efuse_op_key layout");
static_assert(sizeof(struct efuse_op_stats) == 8 * (3 + EFUSE_BPF_LATENCY_SLOTS),
	      "efuse_op_stats layout");
static_assert(sizeof(struct efuse_queue_key) == 8, "efuse_queue_key layout");
static_assert(sizeof(struct efuse_queue_stats) == 8 * (2 + EFUSE_BPF_LATENCY_SLOTS),
	      "efuse_queue_stats layout");
static_assert(sizeof(struct efuse_ctxsw_stats) == 8 * 4, "efuse_ctxsw_stats layout");
static_assert(sizeof(struct efuse_task) == 16, "efuse_task layout");
static_assert(sizeof(struct efuse_health) == 8 * 4, "efuse_health layout");
static_assert(sizeof(struct efuse_op_stats) % 8 == 0 && sizeof(struct efuse_queue_stats) % 8 == 0,
	      "per-CPU values are read in 8-byte strides");
#endif

#endif /* EFUSE_BPF_TELEMETRY_H */
