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
#define EFUSE_BPF_MAX_STATS_KEYS 16384 /* (connection, opcode, queue) triples */

/* Telemetry levels (the bpf program's `level`, written by efused at any time). "off" has
 * no value here: then no program is attached. */
#define EFUSE_BPF_LEVEL_REQUESTS 1 /* counts, errors, latency, in flight */
#define EFUSE_BPF_LEVEL_FULL 2     /* and the context switches requests cost */

/* Latency sampling (telemetry_sample_every, N): every request is counted at its end; the
 * send program, which times requests, is attached by efused in sampling windows that cover
 * 1/N of the time (service/src/bpf/sample_windows.h), and every request sent inside a window
 * is timed (and, at level "full", its client's context switches read). N = 1 keeps it
 * attached: every request timed. */
#define EFUSE_BPF_SAMPLE_EVERY_MAX 65536

/* Exact counters live in per-CPU arrays indexed by (connection slot, opcode) and
 * (connection slot, queue slot): an array lookup is a few inlined instructions, a hash
 * lookup a function call with a key hash and a bucket walk. A connection takes one of
 * EFUSE_BPF_CONN_SLOTS slots (conn_slots, claimed with a compare-and-swap at its first
 * request, at one of EFUSE_BPF_CONN_PROBES places its id hashes to; freed by efused when
 * the connection is gone). Connections that find no free slot, and io_uring queues at or
 * above EFUSE_BPF_QUEUE_SLOTS - 1, are counted in the `spill` hash instead. */
#define EFUSE_BPF_CONN_SLOT_BITS 5
#define EFUSE_BPF_CONN_SLOTS (1U << EFUSE_BPF_CONN_SLOT_BITS)
#define EFUSE_BPF_CONN_PROBES 4
#define EFUSE_BPF_QUEUE_SLOTS 64 /* queue slot 0: classic (/dev/fuse); qid q: slot q + 1 */
#define EFUSE_BPF_CONN_FREE 0U   /* no FUSE connection has device number 0:0 */
/* The spill hash's key is an efuse_stats_key: a per-opcode count has qid
 * EFUSE_BPF_QUEUE_ANY, a per-queue count opcode EFUSE_BPF_OPCODE_ANY. */
#define EFUSE_BPF_QUEUE_ANY 0xfffffffeU
#define EFUSE_BPF_OPCODE_ANY 0xffffffffU

static inline __u32 efuse_conn_hash(__u32 conn)
{
	return (conn * 0x9e3779b1U) >> (32 - EFUSE_BPF_CONN_SLOT_BITS);
}

/* ---- X-macros: each list declares a struct's counters once; the C++ side builds its
 * metric names, help texts and aggregation loops from the same lists. ---- */

/* Exact per (connection, opcode) and per (connection, queue) counters: every request,
 * counted at its end (requests in flight: the kernel's own count, fusectl's `waiting`). */
#define EFUSE_BPF_COUNT_COUNTERS(X)                           \
	X(ended, "requests seen at fuse_request_end")          \
	X(errors, "ended requests whose reply carried an error (out.h.error != 0)")

/* Per (connection, opcode, queue) latency of the sampled requests, besides the latency
 * histogram and the context switches. */
#define EFUSE_BPF_STATS_COUNTERS(X)                                               \
	X(samples, "requests timed (sent in a sampling window; == the histogram's total)") \
	X(latency_sum_ns, "sum of their send-to-end durations in nanoseconds")

/* Context switch counters: X(field, side, kind). */
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
 * Sampled requests between send and end, at the index their address hashes to
 * (efuse_inflight_index), claimed and released with atomic exchanges: no locks on the
 * request path. A sampled request whose slot is taken goes to the inflight hash below
 * instead (the program's inflight_hashed counts its entries, so that the ends of requests
 * not sampled look there only while it has any). */
#define EFUSE_BPF_INFLIGHT_SLOTS 4096 /* a power of two */
#define EFUSE_BPF_INFLIGHT_SLOT_BITS 12
#define EFUSE_BPF_SLOT_FREE 0ULL
#define EFUSE_BPF_SLOT_BUSY 1ULL /* being filled or emptied; kernel addresses are never 0, 1 */

struct efuse_req_start {
	__u64 start_ns;      /* bpf_ktime_get_ns() at fuse_request_send */
	__u32 opcode;        /* clamped to EFUSE_BPF_OPCODE_SLOTS - 1 */
	__u32 client_tid;    /* thread waiting for it; 0: none counted (level "requests", a
			      * background request, or sent by a server thread) */
	__u32 conn;          /* connection id */
	__u32 pid;           /* in.h.pid: with nodeid and opcode, what an end checks before
			      * taking a start at its address for its own (a start left by a
			      * request freed without an end, e.g. of a killed client, has
			      * another sender) and what picks the start's sampled bucket */
	__u64 nodeid;        /* in.h.nodeid */
	__u64 client_task;   /* its struct task_struct *, read back at end */
	__u64 client_nvcsw;  /* its voluntary switches at send (task_struct.nvcsw) */
	__u64 client_nivcsw; /* and involuntary ones (nivcsw) */
};

struct efuse_inflight_slot {
	__u64 req; /* EFUSE_BPF_SLOT_FREE, EFUSE_BPF_SLOT_BUSY or the request's address */
	struct efuse_req_start start;
};

/* sampled: BPF_MAP_TYPE_ARRAY (mmapable), EFUSE_BPF_SAMPLE_BUCKETS entries of
 * efuse_sample_bucket: how many sampled starts (slots and inflight hash) are remembered per
 * bucket of (nodeid, pid, opcode). The end of a request whose bucket holds none was not
 * sampled and looks at no slot: the slots are 256 KiB of memory touched at random, a cache
 * and TLB miss per look. One bucket per cache line, so that buckets never share one. Whoever
 * removes a start (its end, a send replacing it, efused dropping a stale one) decrements
 * its bucket; a count is signed and only "> 0" means "look". */
#define EFUSE_BPF_SAMPLE_BUCKET_BITS 6
#define EFUSE_BPF_SAMPLE_BUCKETS (1U << EFUSE_BPF_SAMPLE_BUCKET_BITS)

struct efuse_sample_bucket {
	__s64 starts;
	__u64 pad[7];
};

static inline __u32 efuse_sample_bucket_of(__u64 nodeid, __u32 pid, __u32 opcode)
{
	__u64 h = nodeid ^ ((__u64)pid << 32) ^ opcode;

	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ULL;
	h ^= h >> 33;
	return (__u32)(h >> (64 - EFUSE_BPF_SAMPLE_BUCKET_BITS));
}

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

/* counts, queue_counts: BPF_MAP_TYPE_PERCPU_ARRAY, key __u32, value efuse_counts: index
 * slot * EFUSE_BPF_OPCODE_SLOTS + opcode and slot * EFUSE_BPF_QUEUE_SLOTS + queue slot for
 * the connection in conn_slots[slot]. spill: BPF_MAP_TYPE_PERCPU_HASH, key efuse_stats_key,
 * value efuse_counts. */
struct efuse_counts {
#define EFUSE_BPF_FIELD(name, help) __u64 name;
	EFUSE_BPF_COUNT_COUNTERS(EFUSE_BPF_FIELD)
#undef EFUSE_BPF_FIELD
};

/* sampler: BPF_MAP_TYPE_PERCPU_ARRAY, one element: the connection slot this CPU looked up
 * last (valid while the program's conn_gen, which efused bumps whenever it frees a slot, is
 * `gen`), so that a CPU serving one mount reads one line of its own instead of conn_slots;
 * and the self-check's counts of sampled starts: filed by the send program, taken back by
 * the end of the same request (efused's self-check compares them, see MatchCheck). */
struct efuse_sampler {
	__u32 conn;  /* the connection last looked up (EFUSE_BPF_CONN_FREE: none) */
	__s32 slot;  /* its slot, or -1: the spill hash */
	__u32 gen;   /* conn_gen when looked up */
	__u32 pad;
	__u64 filed; /* sampled starts remembered by sends on this CPU */
	__u64 taken; /* sampled starts found and taken by their request's end on this CPU */
};

/* Context switches: X-macro fields, summed over CPUs and queues per connection. */
struct efuse_ctxsw_stats {
#define EFUSE_BPF_FIELD(name, side, kind) __u64 name;
	EFUSE_BPF_CTXSW_COUNTERS(EFUSE_BPF_FIELD)
#undef EFUSE_BPF_FIELD
};

/* stats: BPF_MAP_TYPE_PERCPU_HASH, key efuse_stats_key, value efuse_stats: what a sampled
 * request's end adds, in one map so that it does one hash lookup. User space sums it by
 * (connection, opcode), by (connection, queue) and by connection. */
struct efuse_stats_key {
	__u32 conn;
	__u32 opcode;
	__u32 qid; /* io_uring queue id (fuse_ring_queue.qid) or EFUSE_BPF_QUEUE_CLASSIC */
	__u32 pad;
};

struct efuse_stats {
#define EFUSE_BPF_FIELD(name, help) __u64 name;
	EFUSE_BPF_STATS_COUNTERS(EFUSE_BPF_FIELD)
#undef EFUSE_BPF_FIELD
	__u64 latency[EFUSE_BPF_LATENCY_SLOTS];
	/* client: switches of the waiting client between send and end; daemon: switches of
	 * the replying server thread since its previous reply (level "full" only) */
	struct efuse_ctxsw_stats ctxsw;
};

/* tasks: BPF_MAP_TYPE_TASK_STORAGE, value efuse_task: a server ("daemon") thread, from its
 * first reply on (the server writes its reply in its own context, so fuse_request_end runs
 * there), with its switch counters at its latest reply. */
#define EFUSE_BPF_TASK_DAEMON 1U

struct efuse_task {
	__u32 flags; /* EFUSE_BPF_TASK_* */
	__u32 level_gen; /* the program's level_gen when nvcsw/nivcsw were taken */
	__u64 nvcsw;  /* task_struct.nvcsw at its latest reply */
	__u64 nivcsw; /* task_struct.nivcsw */
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
static_assert(sizeof(struct efuse_req_start) == 56, "efuse_req_start layout");
static_assert(sizeof(struct efuse_inflight_slot) == 64, "efuse_inflight_slot layout");
static_assert(sizeof(struct efuse_sample_bucket) == 64, "efuse_sample_bucket layout");
static_assert(EFUSE_BPF_INFLIGHT_SLOTS == 1 << EFUSE_BPF_INFLIGHT_SLOT_BITS,
	      "EFUSE_BPF_INFLIGHT_SLOTS is 2^EFUSE_BPF_INFLIGHT_SLOT_BITS");
static_assert(sizeof(struct efuse_stats_key) == 16, "efuse_stats_key layout");
static_assert(sizeof(struct efuse_ctxsw_stats) == 8 * 4, "efuse_ctxsw_stats layout");
static_assert(sizeof(struct efuse_stats) == 8 * (2 + EFUSE_BPF_LATENCY_SLOTS + 4),
	      "efuse_stats layout");
static_assert(sizeof(struct efuse_counts) == 8 * 2, "efuse_counts layout");
static_assert(sizeof(struct efuse_sampler) == 32, "efuse_sampler layout");
static_assert(EFUSE_BPF_CONN_PROBES <= EFUSE_BPF_CONN_SLOTS, "conn slot probes");
static_assert(EFUSE_BPF_QUEUE_ANY != EFUSE_BPF_QUEUE_CLASSIC, "spill key markers");
static_assert(sizeof(struct efuse_task) == 24, "efuse_task layout");
static_assert(sizeof(struct efuse_health) == 8 * 3, "efuse_health layout");
static_assert(sizeof(struct efuse_stats) % 8 == 0, "per-CPU values are read in 8-byte strides");
#endif

#endif /* EFUSE_BPF_TELEMETRY_H */
