/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map layouts of the handlers in bpf/handlers/, shared by the BPF programs and user space
 * (not by the module, which sees only efuse_handler.h). Values are whole answers with an
 * expiry, struct efuse_handler_entry, encoded by user space.
 */
#ifndef EFUSE_HANDLER_MAPS_H
#define EFUSE_HANDLER_MAPS_H

#include "efuse_handler.h"

/*
 * The value of both answer maps: a whole answer and when it stops being used. efused
 * stores a reply it sent with the validity the reply gave the kernel (attr_valid,
 * entry_valid), so a map never answers for longer than the kernel's own cache would have:
 * the cache timeouts keep bounding what efused's watcher cannot see.
 */
struct efuse_handler_entry {
	struct efuse_handler_answer answer;
	__u64 expires;		/* bpf_ktime_get_ns() (CLOCK_MONOTONIC) from which it is not used */
};

/* efuse_getattr_answers: key __u64 nodeid. */

/* efuse_lookup_answers: (parent nodeid, name zero-filled to EFUSE_HANDLER_NAME_MAX). */
struct efuse_handler_name_key {
	__u64 parent;
	char name[EFUSE_HANDLER_NAME_MAX];
};

/*
 * efuse_open_answers (efuse_open.bpf.c) and efuse_flush_answers (efuse_flush.bpf.c): key
 * __u64 nodeid; entries that never expire (expires UINT64_MAX), kept exact by efused. At
 * most this many nodes have them.
 */
#define EFUSE_OPEN_ANSWERS 16384

/*
 * efuse_handler_outcomes (efuse_handler_stats.bpf.c): per-CPU __u64 counters of
 * what became of the requests of one connection that reached handlers, at
 * key opcode * EFUSE_HANDLER_NR_STATS + stat (enum efuse_handler_stat).
 * Opcodes from EFUSE_HANDLER_OPCODE_SLOTS on are counted under opcode 0.
 */
#define EFUSE_HANDLER_OPCODE_SLOTS 64
#define EFUSE_HANDLER_OUTCOME_SLOTS (EFUSE_HANDLER_OPCODE_SLOTS * EFUSE_HANDLER_NR_STATS)

/*
 * efuse_entry_lookups (efuse_entry_counts.bpf.c): key __u64 nodeid, value __u64, the
 * lookups the kernel took from positive LOOKUP answers for that node (monotonic). Key 0
 * counts those that found the map full. efused keeps fewer nodes with positive answers
 * than this holds.
 */
#define EFUSE_ENTRY_COUNTERS 262144

#ifdef __cplusplus
static_assert(sizeof(struct efuse_handler_name_key) == 8 + EFUSE_HANDLER_NAME_MAX,
	      "efuse_handler_name_key layout");
static_assert(sizeof(struct efuse_handler_entry) == 16 + EFUSE_HANDLER_DATA_MAX + 8,
	      "efuse_handler_entry layout");
#endif

#endif /* EFUSE_HANDLER_MAPS_H */
