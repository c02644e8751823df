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
 * The value of the answer maps: a whole answer and when it stops being used. Where efused
 * sees every change of what it serves (the memory backend; a passthrough mount whose
 * watcher watches every directory the kernel knows) it keeps a reply it sent until a
 * change drops it (expires UINT64_MAX), beyond the validity the reply gave the kernel: the
 * kernel's revalidating LOOKUP or GETATTR is then answered here. Elsewhere it stores it
 * with that validity (attr_valid, entry_valid), so the cache timeouts keep bounding what
 * no watcher sees.
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
 * Negative LOOKUPs of names nobody asked for before (efuse_lookup.bpf.c). efuse_complete_dirs:
 * key __u64 nodeid of a directory whose every name efused knows (it made the directory
 * through the mount, empty, and sees every change since), value the answer for a name that
 * is not there (an entry with nodeid 0 cached for negative_timeout, or -ENOENT when that is
 * 0), expires UINT64_MAX. efuse_dir_names: (parent nodeid, name) of every name of those
 * directories, value unused (1). A LOOKUP that misses efuse_lookup_answers is answered with
 * its directory's answer when the directory is complete and the name is not in
 * efuse_dir_names. efused puts a name in before the operation that makes it, takes it out
 * after the one that removed it, and takes a directory's mark out before its names
 * (fuse/kernel_answers.h). At most this many directories and names.
 */
#define EFUSE_COMPLETE_DIRS 16384
#define EFUSE_DIR_NAMES 262144

/*
 * efuse_open_answers (efuse_open.bpf.c) and efuse_flush_answers (efuse_flush.bpf.c): key
 * __u64 nodeid; entries that never expire (expires UINT64_MAX), kept exact by efused. At
 * most this many nodes have them.
 */
#define EFUSE_OPEN_ANSWERS 16384

/*
 * efuse_statfs_answers (efuse_statfs.bpf.c): key __u64 nodeid, the STATFS reply efused last
 * sent for the node, expiring cache.statfs_timeout after it was read (never kept longer: no
 * watcher reports a change of a file system's statistics). At most this many nodes.
 */
#define EFUSE_STATFS_ANSWERS 1024

/*
 * efuse_access_answers (efuse_access.bpf.c, kmod patch 0017): key __u64 nodeid; answer.data
 * holds answer.size / sizeof(struct efuse_access_slot) slots, each the answer efused gave an
 * ACCESS of the node by one caller (uid, gid) for one mask, with its own expiry (the
 * attribute validity efused sent last, never longer: the answer also depends on what no
 * watcher reports, such as a backing file system remounted read-only). The entry's expires
 * is the latest of its slots'. A change of the node's attributes, ACLs included, drops the
 * entry. At most this many nodes.
 */
struct efuse_access_slot {
	__u64 expires;		/* bpf_ktime_get_ns() from which the slot is not used */
	__u32 uid;
	__u32 gid;
	__u32 mask;		/* R_OK | W_OK | X_OK, as the request had it */
	__s32 error;		/* 0, -EACCES, -EROFS or -EPERM */
};
#define EFUSE_ACCESS_SLOTS (EFUSE_HANDLER_DATA_MAX / sizeof(struct efuse_access_slot))
#define EFUSE_ACCESS_ANSWERS 16384

/*
 * efuse_releases (efuse_release.bpf.c): a BPF ring buffer of the RELEASEs of efused's own
 * opens the RELEASE handler took over (kmod patch 0015), one struct efuse_release_event
 * each, which efused drains and carries out as it would the requests (and before every
 * FORGET, so a node's releases come first, as with requests). When it is full the RELEASE
 * goes up as a request.
 */
struct efuse_release_event {
	__u64 nodeid;
	__u64 fh;		/* the fh efused gave the open */
	__u32 flags;		/* the open's flags */
	__u32 release_flags;
};
#define EFUSE_RELEASE_RING_BYTES (256 * 1024)

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

/*
 * efuse_read_blocks (efuse_read.bpf.c): the mount's READ block cache, an array of
 * EFUSE_READ_WAYS * efuse_read_sets blocks that efused creates (size from mounts.yaml,
 * handler_cache_bytes), maps into its memory and hands to every READ handler. Block
 * `index` (file offset / EFUSE_HANDLER_BLOCK_SIZE) of node `nodeid` lives in one of the
 * EFUSE_READ_WAYS slots of set efuse_read_set(nodeid, index, sets); efused picks the slot
 * (an empty one, else the least recently used: `used`, which handlers stamp on each hit).
 *
 * Array slots are never freed or recycled by the kernel, and `gen` guards each one like a
 * sequence lock: efused stores 0 in it, then the rest, then the version of the file the
 * block belongs to (never 0, never reused); to drop a block it stores 0. A handler reads
 * gen with an atomic (a full barrier), then the fields and data, then gen again, and uses
 * the block only when both reads agree and are not 0, and when every block of one answer
 * has the same gen: a block being written or dropped meanwhile, or a mix of two versions
 * of a file, is never served. efused drops a file's blocks before it replies to anything
 * that changes the file, and before it invalidates the kernel's cache for an outside
 * change.
 */
#define EFUSE_READ_WAYS 4

struct efuse_read_block {
	__u64 gen;		/* 0: empty; else the file version this block belongs to */
	__u64 nodeid;
	__u64 index;		/* file offset / EFUSE_HANDLER_BLOCK_SIZE */
	__u64 used;		/* bpf_ktime_get_ns() of the last store or hit */
	__u32 valid;		/* bytes of data that are the file's; the rest is zero */
	__u32 eof;		/* 1: the file ends at index * block size + valid */
	__u8 data[EFUSE_HANDLER_BLOCK_SIZE];
};

/* The set block `index` of `nodeid` lives in, of `sets` (> 0). */
static inline __u32 efuse_read_set(__u64 nodeid, __u64 index, __u32 sets)
{
	__u64 h = nodeid * 0x9e3779b97f4a7c15ULL ^ (index + 1) * 0xc2b2ae3d27d4eb4fULL;

	return (__u32)(h >> 32) % sets;
}

#ifdef __cplusplus
static_assert(sizeof(struct efuse_read_block) == 40 + EFUSE_HANDLER_BLOCK_SIZE,
	      "efuse_read_block layout");
static_assert(sizeof(struct efuse_handler_name_key) == 8 + EFUSE_HANDLER_NAME_MAX,
	      "efuse_handler_name_key layout");
static_assert(sizeof(struct efuse_handler_entry) == 16 + EFUSE_HANDLER_DATA_MAX + 8,
	      "efuse_handler_entry layout");
static_assert(sizeof(struct efuse_access_slot) == 24 && EFUSE_ACCESS_SLOTS == 10,
	      "efuse_access_slot layout");
#endif

#endif /* EFUSE_HANDLER_MAPS_H */
