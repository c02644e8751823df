// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * FUSE request telemetry for every FUSE connection on the host, built on the kernel's
 * fuse_request_send / fuse_request_end tracepoints and sched_switch (BTF-typed
 * tracepoints: fentry/kprobes are not needed). CO-RE throughout, no hard-coded offsets:
 * the tracepoint arguments are BTF-typed pointers, so their fields are read with plain
 * loads that clang records as CO-RE relocations (vmlinux.h and the FUSE types below mark
 * every struct preserve_access_index) and libbpf fixes up against the running kernel's BTF; the one
 * untyped pointer (fuse_req.ring_queue is a void *) is read with BPF_CORE_READ. The object
 * loads on any kernel whose BTF has the fields, whatever their offsets, with FUSE built in
 * or as a module.
 *
 * Direct loads instead of BPF_CORE_READ everywhere: each BPF_CORE_READ step is a
 * bpf_probe_read_kernel() call, and these programs run on every FUSE request and every
 * context switch of the host (docs/bpf.md has the measured cost).
 *
 * Maps and their layouts: efuse_telemetry.h (shared with efused's loader).
 *
 *   send: remember the request (its struct fuse_req address) -> start time, opcode, sending thread; count the upcall;
 *         mark the sender as a client with one more request outstanding.
 *   end:  latency per (conn, opcode) and per (conn, queue) into log2 histograms; errors;
 *         the current thread (the server writing its reply) becomes a daemon thread of
 *         conn; the sender has one request fewer outstanding.
 *   sched_switch: a switched-out daemon thread counts for its connection's daemon side, a
 *         switched-out thread with requests outstanding for its connection's client side;
 *         voluntary unless it was preempted (preempt || prev_state == TASK_RUNNING), the
 *         same rule as /proc/<pid>/status's voluntary/nonvoluntary_ctxt_switches.
 *
 * In-flight requests are the inflight map's entries, counted by user space at scrape time.
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

struct fuse_req___efuse {
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

#define EFUSE_ENOTCONN 107
#define EFUSE_ECONNABORTED 103
#define EFUSE_TASK_DEAD 0x80

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

/* The per-CPU statistics maps allocate on first use (a few dozen keys in practice):
 * preallocating max_entries x possible CPUs x ~300 bytes would cost megabytes per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EFUSE_BPF_MAX_OP_KEYS);
	__type(key, struct efuse_op_key);
	__type(value, struct efuse_op_stats);
} op_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EFUSE_BPF_MAX_QUEUE_KEYS);
	__type(key, struct efuse_queue_key);
	__type(value, struct efuse_queue_stats);
} queue_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, EFUSE_BPF_MAX_CONNS);
	__type(key, __u32);
	__type(value, struct efuse_ctxsw_stats);
} ctxsw_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, EFUSE_BPF_MAX_TASKS);
	__type(key, __u32);
	__type(value, struct efuse_task);
} tasks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct efuse_health);
} health SEC(".maps");

/* Zero values to insert (read-only data; the kernel copies them). */
static const struct efuse_op_stats zero_op;
static const struct efuse_queue_stats zero_queue;
static const struct efuse_ctxsw_stats zero_ctxsw;

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
	struct fuse_ring_queue___efuse *q = (struct fuse_ring_queue___efuse *)req->ring_queue;
	if (!q)
		return EFUSE_BPF_QUEUE_CLASSIC;
	return BPF_CORE_READ(q, qid);
}

/* Test only (EFUSE_BPF_TEST_MISMATCH=1, docs/bpf.md): the send program files every request
 * under its address plus this, so no end finds its send, as on a kernel whose tracepoints
 * do not agree on the key. Lets the tests trigger efused's self-check for real. */
const volatile __u64 test_send_key_skew = 0;

/* Remembers a request's start: in its slot when that is free (a compare-and-swap claims it,
 * an exchange publishes it), else in the inflight hash, whose bucket locks cost more. An
 * entry with the same address is a request freed without reaching fuse_request_end: the
 * new one replaces it. */
static __always_inline bool track_start(__u64 req, const struct efuse_req_start *start)
{
	__u32 idx = efuse_inflight_index(req);
	struct efuse_inflight_slot *slot = bpf_map_lookup_elem(&inflight_slots, &idx);

	if (!slot)
		return false;
	if (__sync_val_compare_and_swap(&slot->req, EFUSE_BPF_SLOT_FREE, EFUSE_BPF_SLOT_BUSY) ==
	    EFUSE_BPF_SLOT_FREE) {
		slot->start = *start;
		__sync_lock_test_and_set(&slot->req, req);
		return true;
	}
	if (slot->req == req) {
		/* Only this address's requests use it, and the older one is dead. */
		HEALTH_INC(duplicate_send);
		slot->start = *start;
		return true;
	}
	struct efuse_req_key key = { .req = req };
	long err = bpf_map_update_elem(&inflight, &key, start, BPF_NOEXIST);
	if (err == -17 /* EEXIST */) {
		HEALTH_INC(duplicate_send);
		err = bpf_map_update_elem(&inflight, &key, start, BPF_ANY);
	}
	if (err) {
		HEALTH_INC(inflight_full);
		return false;
	}
	return true;
}

/* Finds and forgets a request's start; false if it was not seen being sent. */
static __always_inline bool take_start(__u64 req, struct efuse_req_start *start)
{
	__u32 idx = efuse_inflight_index(req);
	struct efuse_inflight_slot *slot = bpf_map_lookup_elem(&inflight_slots, &idx);

	/* Only this request's end empties its slot, so a match cannot change under us. */
	if (slot && slot->req == req) {
		*start = slot->start;
		__sync_lock_test_and_set(&slot->req, EFUSE_BPF_SLOT_FREE);
		return true;
	}
	struct efuse_req_key key = { .req = req };
	struct efuse_req_start *found = bpf_map_lookup_elem(&inflight, &key);
	if (!found) {
		HEALTH_INC(unmatched_end);
		return false;
	}
	*start = *found;
	bpf_map_delete_elem(&inflight, &key);
	return true;
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
	struct efuse_req_start start = {};
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct efuse_task *task;

	start.conn = req_conn(req);
	start.start_ns = bpf_ktime_get_ns();
	start.opcode = clamp_opcode(req->in.h.opcode);

	/* A server thread sending (the kernel flushes queued background requests from the
	 * reply path) is not a client waiting for it. */
	task = bpf_map_lookup_elem(&tasks, &tid);
	if (!task || !(task->flags & EFUSE_BPF_TASK_DAEMON))
		start.client_tid = tid;

	if (!track_start(req_address(ctx) + test_send_key_skew, &start))
		return 0;

	struct efuse_op_key op_key = { .conn = start.conn, .opcode = start.opcode };
	struct efuse_op_stats *op = lookup_or_init(&op_stats, &op_key, &zero_op);
	if (op)
		__sync_fetch_and_add(&op->requests, 1);

	if (start.client_tid) {
		if (task) {
			task->client_conn = start.conn;
			__sync_fetch_and_add(&task->outstanding, 1);
		} else {
			struct efuse_task t = { .client_conn = start.conn, .outstanding = 1 };
			bpf_map_update_elem(&tasks, &tid, &t, BPF_NOEXIST);
		}
	}
	return 0;
}

SEC("tp_btf/fuse_request_end")
int BPF_PROG(efuse_request_end, const struct fuse_req___efuse *req)
{
	struct efuse_req_start start;
	__u64 now = bpf_ktime_get_ns();
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (!take_start(req_address(ctx), &start))
		return 0;

	__u64 delta = now > start.start_ns ? now - start.start_ns : 0;
	__u32 slot = latency_slot(delta);
	int error = req->out.h.error;

	struct efuse_op_key op_key = { .conn = start.conn, .opcode = start.opcode };
	struct efuse_op_stats *op = lookup_or_init(&op_stats, &op_key, &zero_op);
	if (op) {
		if (error)
			__sync_fetch_and_add(&op->errors, 1);
		__sync_fetch_and_add(&op->latency_sum_ns, delta);
		__sync_fetch_and_add(&op->latency[slot], 1);
	}

	struct efuse_queue_key q_key = { .conn = start.conn, .qid = req_queue(req) };
	struct efuse_queue_stats *q = lookup_or_init(&queue_stats, &q_key, &zero_queue);
	if (q) {
		__sync_fetch_and_add(&q->requests, 1);
		__sync_fetch_and_add(&q->latency_sum_ns, delta);
		__sync_fetch_and_add(&q->latency[slot], 1);
	}

	/* The sender has one request fewer outstanding. */
	if (start.client_tid) {
		struct efuse_task *client = bpf_map_lookup_elem(&tasks, &start.client_tid);
		if (client && client->outstanding > 0)
			__sync_fetch_and_add(&client->outstanding, -1);
	}

	/* Whoever completes a request with a real reply is the server: fuse_request_end runs
	 * in the context of the thread that wrote the reply (/dev/fuse write or io_uring
	 * commit). Requests ended by the kernel itself (connection gone: -ENOTCONN, aborted:
	 * -ECONNABORTED) end in whatever context noticed, often a client's: skip those. */
	if (tid != start.client_tid && error != -EFUSE_ENOTCONN && error != -EFUSE_ECONNABORTED) {
		struct efuse_task *self = bpf_map_lookup_elem(&tasks, &tid);
		if (self) {
			self->daemon_conn = start.conn;
			self->flags |= EFUSE_BPF_TASK_DAEMON;
		} else {
			struct efuse_task t = { .flags = EFUSE_BPF_TASK_DAEMON, .daemon_conn = start.conn };
			bpf_map_update_elem(&tasks, &tid, &t, BPF_ANY);
		}
	}
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(efuse_sched_switch, bool preempt, struct task_struct *prev,
	     struct task_struct *next, unsigned int prev_state)
{
	__u32 tid = prev->pid;
	struct efuse_task *task = bpf_map_lookup_elem(&tasks, &tid);

	if (!task)
		return 0;
	if (prev_state & EFUSE_TASK_DEAD) {
		/* Its last switch: forget it so a recycled thread id starts clean. */
		bpf_map_delete_elem(&tasks, &tid);
		return 0;
	}
	bool involuntary = preempt || prev_state == 0 /* TASK_RUNNING */;

	if (task->flags & EFUSE_BPF_TASK_DAEMON) {
		__u32 conn = task->daemon_conn;
		struct efuse_ctxsw_stats *c = lookup_or_init(&ctxsw_stats, &conn, &zero_ctxsw);
		if (c) {
			if (involuntary)
				__sync_fetch_and_add(&c->daemon_involuntary, 1);
			else
				__sync_fetch_and_add(&c->daemon_voluntary, 1);
		}
	}
	if (task->outstanding > 0) {
		__u32 conn = task->client_conn;
		struct efuse_ctxsw_stats *c = lookup_or_init(&ctxsw_stats, &conn, &zero_ctxsw);
		if (c) {
			if (involuntary)
				__sync_fetch_and_add(&c->client_involuntary, 1);
			else
				__sync_fetch_and_add(&c->client_voluntary, 1);
		}
	}
	return 0;
}
