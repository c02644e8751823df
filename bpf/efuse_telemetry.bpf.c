// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * FUSE request telemetry for every FUSE connection on the host, built on the kernel's
 * fuse_request_send / fuse_request_end tracepoints (BTF-typed tracepoints: fentry/kprobes
 * are not needed). CO-RE throughout, no hard-coded offsets: the tracepoint arguments are
 * BTF-typed pointers, so their fields are read with plain loads that clang records as CO-RE
 * relocations (vmlinux.h and the FUSE types below mark every struct preserve_access_index)
 * and libbpf fixes up against the running kernel's BTF; the untyped pointers
 * (fuse_req.ring_queue is a void *, the waiting client's task_struct is kept as a number)
 * are read with BPF_CORE_READ. The object loads on any kernel whose BTF has the fields,
 * whatever their offsets, with FUSE built in or as a module.
 *
 * Nothing runs on context switches: the switches a request costs are read from the
 * threads' own counters (task_struct.nvcsw / nivcsw, what /proc/<pid>/status shows as
 * voluntary/nonvoluntary_ctxt_switches) at send and end. Direct loads instead of
 * BPF_CORE_READ wherever the pointer is typed: each BPF_CORE_READ step is a
 * bpf_probe_read_kernel() call, and these programs run on every FUSE request of the host
 * (docs/bpf.md has the measured cost).
 *
 * Maps and their layouts: efuse_telemetry.h (shared with efused's loader).
 *
 * Every request is counted exactly at its end; the requests sent while efused has the send
 * program attached (sampling windows covering 1 in telemetry_sample_every of the time, or
 * always when that is 1; docs/bpf.md, "Sampling") are timed:
 *
 *   send: (attached in sampling windows only) remember the request (its struct fuse_req
 *         address) -> start time, opcode, connection, and at level "full" the waiting
 *         client and its switch counters.
 *   end:  count it (ended, error) per opcode and per queue; if it was remembered, add its
 *         latency to the log2 histogram of its (conn, opcode, queue) in the per-CPU stats
 *         hash, and at level "full" the client's switches while it waited and the replying
 *         server thread's switches since its previous sampled reply.
 *
 * Outside the windows a request runs one program, and its end costs no clock read, no hash
 * map operation and no task storage: array lookups (inlined by the verifier) and adds.
 *
 * Requests in flight are the kernel's own count (fusectl's `waiting`), read by user space.
 */
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

#include "efuse_telemetry.h"

/* FUSE's internal types are declared here, not taken from vmlinux.h: where FUSE is a module
 * (fuse.ko, as in most distribution kernels) they live in the module's BTF
 * (/sys/kernel/btf/fuse) and a vmlinux.h dumped from vmlinux BTF does not have them. The
 * ___efuse suffix keeps these apart from vmlinux.h's own copies where FUSE is built in;
 * libbpf drops it when matching, and relocates every field read below against the running
 * kernel's types, in vmlinux or in the module. Only the fields read are declared; their
 * offsets here mean nothing. */
struct fuse_in_header___efuse {
	__u32 opcode;
	__u64 nodeid;
	__u32 pid;
} __attribute__((preserve_access_index));

struct fuse_out_header___efuse {
	__s32 error;
} __attribute__((preserve_access_index));

struct fuse_conn___efuse {
	dev_t dev;
} __attribute__((preserve_access_index));

struct fuse_mount___efuse {
	struct fuse_conn___efuse *fc;
} __attribute__((preserve_access_index));

struct fuse_ring_queue___efuse {
	unsigned int qid;
} __attribute__((preserve_access_index));

enum fuse_req_flag___efuse {
	FR_BACKGROUND___efuse = 2,
};

struct fuse_req___efuse {
	unsigned long flags;
	struct {
		struct fuse_in_header___efuse h;
	} in;
	struct {
		struct fuse_out_header___efuse h;
	} out;
	struct fuse_mount___efuse *fm;
	void *ring_queue;
} __attribute__((preserve_access_index));

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* A number as a read-only BTF pointer of the given type (Linux 6.2+, as are the FUSE
 * tracepoints): its fields are then plain loads the kernel guards against faults, cheaper
 * than a bpf_probe_read_kernel() call each. */
extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;

#define EFUSE_ENOTCONN 107
#define EFUSE_ECONNABORTED 103

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, EFUSE_BPF_INFLIGHT_SLOTS);
	__type(key, __u32);
	__type(value, struct efuse_inflight_slot);
} inflight_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EFUSE_BPF_MAX_INFLIGHT);
	__type(key, struct efuse_req_key);
	__type(value, struct efuse_req_start);
} inflight SEC(".maps");

/* Sampled starts remembered, per bucket of (nodeid, pid, opcode): efuse_telemetry.h. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, EFUSE_BPF_SAMPLE_BUCKETS);
	__type(key, __u32);
	__type(value, struct efuse_sample_bucket);
} sampled SEC(".maps");

/* Connection slots: conn_slots[i] is the connection whose exact counters are at index
 * i * EFUSE_BPF_OPCODE_SLOTS + opcode of counts and i * EFUSE_BPF_QUEUE_SLOTS + queue slot
 * of queue_counts (efuse_telemetry.h). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, EFUSE_BPF_CONN_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} conn_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EFUSE_BPF_CONN_SLOTS * EFUSE_BPF_OPCODE_SLOTS);
	__type(key, __u32);
	__type(value, struct efuse_counts);
} counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EFUSE_BPF_CONN_SLOTS * EFUSE_BPF_QUEUE_SLOTS);
	__type(key, __u32);
	__type(value, struct efuse_counts);
} queue_counts SEC(".maps");

/* Counters of connections without a slot, and of io_uring queues beyond the array's. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EFUSE_BPF_MAX_STATS_KEYS);
	__type(key, struct efuse_stats_key);
	__type(value, struct efuse_counts);
} spill SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct efuse_sampler);
} sampler SEC(".maps");

/* The per-CPU statistics map allocates on first use (a few dozen keys in practice):
 * preallocating max_entries x possible CPUs x ~350 bytes would cost megabytes per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EFUSE_BPF_MAX_STATS_KEYS);
	__type(key, struct efuse_stats_key);
	__type(value, struct efuse_stats);
} stats SEC(".maps");

/* Server threads: set at their first reply, freed with the thread (no thread id reuse
 * to worry about); a lookup for a thread without storage is one pointer test. */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct efuse_task);
} tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct efuse_health);
} health SEC(".maps");

/* Zero values to insert (read-only data; the kernel copies them). */
static const struct efuse_stats zero_stats;
static const struct efuse_counts zero_counts;

/* The telemetry level efused asked for (EFUSE_BPF_LEVEL_*), written by efused through the
 * mapped .bss at any time: a reload changes it without reloading the programs. */
__u32 level = EFUSE_BPF_LEVEL_FULL;
/* Bumped by efused at every level change: a server thread's counters taken before it are
 * a baseline only (at level "requests" they were not kept up to date). */
__u32 level_gen = 0;
/* Bumped by efused whenever it frees a connection slot: the CPUs' cached slots are void. */
__u32 conn_gen SEC(".data") = 0;
/* Test only (EFUSE_BPF_TEST_MISMATCH=1, docs/bpf.md): the send program files a sampled
 * request where its end does not look (its address plus this), as on a kernel whose
 * tracepoints do not agree. Lets the tests trigger efused's self-check for real. In .data
 * beside the variables above (one cache line), not in .rodata: every send reads it. */
__u64 test_send_key_skew SEC(".data") = 0;
/* Entries in the inflight hash. The end of a request that was not sampled looks there only
 * while it is not 0; whoever deletes an entry (the request's end, or efused dropping stale
 * entries) decrements it. */
__u64 inflight_hashed = 0;

#define HEALTH_INC(field)                                              \
	do {                                                           \
		__u32 health_key = 0;                                  \
		struct efuse_health *h_ = bpf_map_lookup_elem(&health, &health_key); \
		if (h_)                                                \
			__sync_fetch_and_add(&h_->field, 1);           \
	} while (0)

/* Looks the key up; inserts the zero value when absent. NULL when the map is full. */
static __always_inline void *lookup_or_init(void *map, const void *key, const void *zero)
{
	void *v = bpf_map_lookup_elem(map, key);
	if (v)
		return v;
	/* -EEXIST means another CPU inserted it first: fine, look it up again. */
	bpf_map_update_elem(map, key, zero, BPF_NOEXIST);
	v = bpf_map_lookup_elem(map, key);
	if (!v)
		HEALTH_INC(stats_full);
	return v;
}

static __always_inline __u32 log2_u32(__u32 v)
{
	__u32 r, shift;

	r = (v > 0xFFFF) << 4;
	v >>= r;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline __u32 latency_slot(__u64 ns)
{
	__u32 hi = ns >> 32;
	__u32 slot = hi ? log2_u32(hi) + 32 : log2_u32((__u32)ns);

	return slot < EFUSE_BPF_LATENCY_SLOTS ? slot : EFUSE_BPF_LATENCY_SLOTS - 1;
}

static __always_inline __u32 req_conn(const struct fuse_req___efuse *req)
{
	return req->fm->fc->dev;
}

static __always_inline __u32 clamp_opcode(__u32 opcode)
{
	return opcode < EFUSE_BPF_OPCODE_SLOTS ? opcode : EFUSE_BPF_OPCODE_SLOTS - 1;
}

/* The io_uring queue the request travelled on, or EFUSE_BPF_QUEUE_CLASSIC. ring_queue is
 * a void * in struct fuse_req (present only with CONFIG_FUSE_IO_URING). */
static __always_inline __u32 req_queue(const struct fuse_req___efuse *req)
{
	if (!bpf_core_field_exists(req->ring_queue))
		return EFUSE_BPF_QUEUE_CLASSIC;
	void *ring_queue = req->ring_queue;
	if (!ring_queue)
		return EFUSE_BPF_QUEUE_CLASSIC;
	struct fuse_ring_queue___efuse *q = bpf_rdonly_cast(
		ring_queue, bpf_core_type_id_kernel(struct fuse_ring_queue___efuse));
	return q->qid;
}

/* The slot of the connection's exact counters, claimed at its first request; -1 when all
 * of its EFUSE_BPF_CONN_PROBES places belong to other connections (then: the spill hash). */
static __always_inline int conn_slot(__u32 conn)
{
	__u32 h = efuse_conn_hash(conn);

	for (__u32 i = 0; i < EFUSE_BPF_CONN_PROBES; i++) {
		__u32 idx = (h + i) & (EFUSE_BPF_CONN_SLOTS - 1);
		__u32 *owner = bpf_map_lookup_elem(&conn_slots, &idx);
		if (!owner)
			return -1;
		__u32 cur = *(volatile __u32 *)owner;
		if (cur == conn)
			return idx;
		if (cur == EFUSE_BPF_CONN_FREE) {
			cur = __sync_val_compare_and_swap(owner, EFUSE_BPF_CONN_FREE, conn);
			if (cur == EFUSE_BPF_CONN_FREE || cur == conn)
				return idx;
		}
	}
	return -1;
}

/* conn_slot(), through this CPU's cache of its last lookup. */
static __always_inline int conn_slot_cached(__u32 conn, struct efuse_sampler *cpu)
{
	__u32 gen = conn_gen;

	if (cpu->conn == conn && cpu->gen == gen)
		return cpu->slot;
	int slot = conn_slot(conn);
	cpu->conn = conn;
	cpu->slot = slot;
	cpu->gen = gen;
	return slot;
}

static __always_inline struct efuse_sampler *cpu_state(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&sampler, &zero);
}

/* The exact counters of (connection, opcode): an array entry, or the spill hash's. */
static __always_inline struct efuse_counts *op_counts(int slot, __u32 conn, __u32 opcode)
{
	if (slot >= 0) {
		__u32 idx = (__u32)slot * EFUSE_BPF_OPCODE_SLOTS + opcode;
		return bpf_map_lookup_elem(&counts, &idx);
	}
	struct efuse_stats_key key = { .conn = conn, .opcode = opcode, .qid = EFUSE_BPF_QUEUE_ANY };
	return lookup_or_init(&spill, &key, &zero_counts);
}

/* The exact counters of (connection, queue). */
static __always_inline struct efuse_counts *queue_counts_of(int slot, __u32 conn, __u32 qid)
{
	__u32 qslot = qid == EFUSE_BPF_QUEUE_CLASSIC ? 0 : qid + 1;

	if (slot >= 0 && qslot < EFUSE_BPF_QUEUE_SLOTS) {
		__u32 idx = (__u32)slot * EFUSE_BPF_QUEUE_SLOTS + qslot;
		return bpf_map_lookup_elem(&queue_counts, &idx);
	}
	struct efuse_stats_key key = { .conn = conn, .opcode = EFUSE_BPF_OPCODE_ANY, .qid = qid };
	return lookup_or_init(&spill, &key, &zero_counts);
}

static __always_inline struct efuse_inflight_slot *slot_of(__u64 req)
{
	__u32 idx = efuse_inflight_index(req);

	return bpf_map_lookup_elem(&inflight_slots, &idx);
}

static __always_inline struct efuse_sample_bucket *bucket_of(__u64 nodeid, __u32 pid,
							     __u32 opcode)
{
	__u32 b = efuse_sample_bucket_of(nodeid, pid, opcode);

	return bpf_map_lookup_elem(&sampled, &b);
}

/* Remembers a sampled request's start: in its slot when that is free (a compare-and-swap
 * claims it, an exchange publishes it), else in the inflight hash, whose bucket locks cost
 * more. An entry with the same address is a request freed without reaching
 * fuse_request_end: the new one replaces it (the bucket counts stay: one start out, one in,
 * unless they are in different buckets). */
static __always_inline bool track_start(__u64 req, const struct efuse_req_start *start)
{
	struct efuse_inflight_slot *slot = slot_of(req);
	struct efuse_sample_bucket *b = bucket_of(start->nodeid, start->pid, start->opcode);

	if (!slot || !b)
		return false;
	__u64 old = __sync_val_compare_and_swap(&slot->req, EFUSE_BPF_SLOT_FREE, EFUSE_BPF_SLOT_BUSY);
	if (old == EFUSE_BPF_SLOT_FREE) {
		slot->start = *start;
		__sync_fetch_and_add(&b->starts, 1);
		__sync_lock_test_and_set(&slot->req, req);
		return true;
	}
	if (old == req &&
	    __sync_val_compare_and_swap(&slot->req, req, EFUSE_BPF_SLOT_BUSY) == req) {
		/* Only this address's requests use it, and the older one is dead. */
		HEALTH_INC(duplicate_send);
		struct efuse_sample_bucket *ob =
			bucket_of(slot->start.nodeid, slot->start.pid, slot->start.opcode);
		if (ob)
			__sync_fetch_and_add(&ob->starts, -1);
		slot->start = *start;
		__sync_fetch_and_add(&b->starts, 1);
		__sync_lock_test_and_set(&slot->req, req);
		return true;
	}
	struct efuse_req_key key = { .req = req };
	long err = bpf_map_update_elem(&inflight, &key, start, BPF_NOEXIST);
	if (err == -17 /* EEXIST */) {
		/* A dead request's start at this address: replaced (and recounted). */
		HEALTH_INC(duplicate_send);
		struct efuse_req_start *dead = bpf_map_lookup_elem(&inflight, &key);
		if (dead && bpf_map_delete_elem(&inflight, &key) == 0) {
			struct efuse_sample_bucket *ob = bucket_of(dead->nodeid, dead->pid, dead->opcode);
			if (ob)
				__sync_fetch_and_add(&ob->starts, -1);
			__sync_fetch_and_add(&inflight_hashed, -1);
		}
		err = bpf_map_update_elem(&inflight, &key, start, BPF_NOEXIST);
	}
	if (err) {
		HEALTH_INC(inflight_full);
		return false;
	}
	__sync_fetch_and_add(&inflight_hashed, 1);
	__sync_fetch_and_add(&b->starts, 1);
	return true;
}

/* Whether a start is this request's: the same sender, node and opcode (a start at the same
 * address left by a request freed without an end has another sender: its client was killed). */
static __always_inline bool start_matches(const struct efuse_req_start *start, __u64 nodeid,
					  __u32 pid, __u32 opcode, __u32 conn)
{
	return start->pid == pid && start->nodeid == nodeid && start->opcode == opcode &&
	       start->conn == conn;
}

/* Finds and forgets a request's start; false if it was not sampled (or not seen being sent,
 * or what is at its address is a dead request's start, which is dropped). */
static __always_inline bool take_start(__u64 req, struct efuse_sample_bucket *b, __u64 nodeid,
				       __u32 pid, __u32 opcode, __u32 conn,
				       struct efuse_req_start *start)
{
	struct efuse_inflight_slot *slot = slot_of(req);

	/* A compare-and-swap claims it: efused may be dropping it as stale at the same time. */
	if (slot && slot->req == req &&
	    __sync_val_compare_and_swap(&slot->req, req, EFUSE_BPF_SLOT_BUSY) == req) {
		*start = slot->start;
		__sync_lock_test_and_set(&slot->req, EFUSE_BPF_SLOT_FREE);
	} else {
		if (!inflight_hashed)
			return false;
		struct efuse_req_key key = { .req = req };
		struct efuse_req_start *found = bpf_map_lookup_elem(&inflight, &key);
		if (!found)
			return false;
		*start = *found;
		if (bpf_map_delete_elem(&inflight, &key) != 0)
			return false; /* efused dropped it meanwhile, and counted it */
		__sync_fetch_and_add(&inflight_hashed, -1);
	}
	if (start_matches(start, nodeid, pid, opcode, conn)) {
		__sync_fetch_and_add(&b->starts, -1);
		return true;
	}
	HEALTH_INC(duplicate_send);
	struct efuse_sample_bucket *ob = bucket_of(start->nodeid, start->pid, start->opcode);
	if (ob)
		__sync_fetch_and_add(&ob->starts, -1);
	return false;
}

/* Whether the sender waits for the reply: background requests (readahead, writeback,
 * async I/O) are sent by whoever queued them, who does not wait; their switches are not
 * the request's. Kernels without the flag count every sender. */
static __always_inline bool foreground(const struct fuse_req___efuse *req)
{
	if (!bpf_core_enum_value_exists(enum fuse_req_flag___efuse, FR_BACKGROUND___efuse))
		return true;
	__u32 bit = bpf_core_enum_value(enum fuse_req_flag___efuse, FR_BACKGROUND___efuse);
	return !((req->flags >> (bit & 63)) & 1);
}

/* The request's address as a number. The verifier does not let a BTF pointer be hashed
 * or compared with a number, so read the tracepoint's raw argument as data. */
static __always_inline __u64 req_address(unsigned long long *ctx)
{
	__u64 addr = 0;

	bpf_probe_read_kernel(&addr, sizeof(addr), &ctx[0]);
	return addr;
}

SEC("tp_btf/fuse_request_send")
int BPF_PROG(efuse_request_send, const struct fuse_req___efuse *req)
{
	struct efuse_sampler *cpu = cpu_state();

	if (!cpu)
		return 0;
	struct efuse_req_start start = {};
	start.conn = req_conn(req);
	start.opcode = clamp_opcode(req->in.h.opcode);
	start.pid = req->in.h.pid;
	start.nodeid = req->in.h.nodeid;
	start.start_ns = bpf_ktime_get_ns();
	if (level == EFUSE_BPF_LEVEL_FULL && foreground(req)) {
		struct task_struct *task = bpf_get_current_task_btf();
		/* A server thread sending (the kernel flushes queued background requests from
		 * the reply path) is not a client waiting for it. */
		struct efuse_task *t = bpf_task_storage_get(&tasks, task, 0, 0);
		if (!t || !(t->flags & EFUSE_BPF_TASK_DAEMON)) {
			start.client_tid = task->pid;
			start.client_task = bpf_get_current_task(); /* == task, as a number */
			start.client_nvcsw = task->nvcsw;
			start.client_nivcsw = task->nivcsw;
		}
	}
	if (track_start(req_address(ctx) + test_send_key_skew, &start))
		cpu->filed += 1; /* per-CPU value: a plain add */
	return 0;
}

SEC("tp_btf/fuse_request_end")
int BPF_PROG(efuse_request_end, const struct fuse_req___efuse *req)
{
	__u32 conn = req_conn(req);
	__u32 opcode = clamp_opcode(req->in.h.opcode);
	__u32 qid = req_queue(req);
	int error = req->out.h.error;
	struct efuse_sampler *cpu = cpu_state();
	int cslot = cpu ? conn_slot_cached(conn, cpu) : conn_slot(conn);

	struct efuse_counts *c = op_counts(cslot, conn, opcode);
	if (c) { /* per-CPU values: plain adds (a tracing program does not nest on its CPU) */
		c->ended += 1;
		if (error)
			c->errors += 1;
	}
	c = queue_counts_of(cslot, conn, qid);
	if (c) {
		c->ended += 1;
		if (error)
			c->errors += 1;
	}

	/* Not sampled, unless its bucket holds a start: then the slot (or hash) says. */
	__u64 nodeid = req->in.h.nodeid;
	__u32 pid = req->in.h.pid;
	struct efuse_sample_bucket *b = bucket_of(nodeid, pid, opcode);
	if (!b || b->starts <= 0)
		return 0;
	struct efuse_req_start start;
	if (!take_start(req_address(ctx), b, nodeid, pid, opcode, conn, &start))
		return 0;
	if (cpu)
		cpu->taken += 1;
	__u64 now = bpf_ktime_get_ns();
	__u64 delta = now > start.start_ns ? now - start.start_ns : 0;
	struct efuse_stats_key key = { .conn = conn, .opcode = opcode, .qid = qid };
	struct efuse_stats *st = lookup_or_init(&stats, &key, &zero_stats);
	if (!st)
		return 0;
	st->samples += 1;
	st->latency_sum_ns += delta;
	st->latency[latency_slot(delta)] += 1;

	if (level != EFUSE_BPF_LEVEL_FULL)
		return 0;

	/* The client's switches while it waited: its counters now minus at send. A sent
	 * foreground request's client waits in the kernel until this end wakes it (if it gave
	 * up while the request was still queued, there is no end), so it is alive; its pid
	 * guards against anything else. */
	if (start.client_task) {
		struct task_struct *client = bpf_rdonly_cast((void *)start.client_task,
							     bpf_core_type_id_kernel(struct task_struct));
		if (client->pid == (int)start.client_tid) {
			st->ctxsw.client_voluntary += client->nvcsw - start.client_nvcsw;
			st->ctxsw.client_involuntary += client->nivcsw - start.client_nivcsw;
		}
	}

	/* Whoever completes a request with a real reply is the server: fuse_request_end runs
	 * in the context of the thread that wrote the reply (/dev/fuse write or io_uring
	 * commit). Requests ended by the kernel itself (connection gone: -ENOTCONN, aborted:
	 * -ECONNABORTED) end in whatever context noticed, often a client's: skip those. Its
	 * switches since its previous sampled reply count for this connection: every switch
	 * of the thread is counted once, at the sampled reply that follows it. */
	struct task_struct *self = bpf_get_current_task_btf();
	if (self->pid == (int)start.client_tid || error == -EFUSE_ENOTCONN ||
	    error == -EFUSE_ECONNABORTED)
		return 0;
	struct efuse_task *t = bpf_task_storage_get(&tasks, self, 0,
						    BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!t)
		return 0;
	__u64 nvcsw = self->nvcsw, nivcsw = self->nivcsw;
	__u32 gen = level_gen;
	if ((t->flags & EFUSE_BPF_TASK_DAEMON) && t->level_gen == gen) {
		st->ctxsw.daemon_voluntary += nvcsw - t->nvcsw;
		st->ctxsw.daemon_involuntary += nivcsw - t->nivcsw;
	}
	t->flags |= EFUSE_BPF_TASK_DAEMON;
	t->level_gen = gen;
	t->nvcsw = nvcsw;
	t->nivcsw = nivcsw;
	return 0;
}
