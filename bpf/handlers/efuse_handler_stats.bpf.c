// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Counts what became of the requests of one connection that reached the handlers: the
 * module fires efuse_handler_done(conn, opcode, stat) once per such request (kmod/, patch
 * 0007) with the outcome it decided after checking the handler's answer (answered, or why
 * the request went up: enum efuse_handler_stat). efused loads one copy per mount, with
 * efuse_conn set to the mount's connection, and reads efuse_handler_outcomes at scrape
 * time (efuse_kernel_answered_total, efuse_kernel_handler_fallbacks_total).
 *
 * A plain raw tracepoint: it only reads its three scalar arguments.
 */
#include "efuse_handler.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EFUSE_HANDLER_OUTCOME_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} efuse_handler_outcomes SEC(".maps");

SEC("raw_tp/efuse_handler_done")
int efuse_handler_done(struct bpf_raw_tracepoint_args *args)
{
	__u32 conn = args->args[0];
	__u32 opcode = args->args[1];
	__u32 stat = args->args[2];
	__u32 key;
	__u64 *n;

	if (!efuse_handler_mine(conn) || stat >= EFUSE_HANDLER_NR_STATS)
		return 0;
	if (opcode >= EFUSE_HANDLER_OPCODE_SLOTS)
		opcode = 0;
	key = opcode * EFUSE_HANDLER_NR_STATS + stat;
	n = bpf_map_lookup_elem(&efuse_handler_outcomes, &key);
	if (n)
		*n += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
