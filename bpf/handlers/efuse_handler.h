/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The buffer efuse.ko hands to eBPF handlers through the writable raw
 * tracepoint efuse_handler, before a request would be queued for the
 * server. The module, the BPF programs and user space share this header
 * byte for byte: fixed-width types, explicit padding.
 *
 * The verifier bounds every access a raw_tp.w program makes through the
 * tracepoint's first argument to sizeof(struct efuse_handler_ctx)
 * (sizeof(struct efuse_handler_read_ctx) for efuse_handler_read). The
 * module fills in, zeroes out, runs the handlers and then reads out only;
 * it checks the answer against its own copy of the request, never against
 * in, which a handler may overwrite.
 */
#ifndef EFUSE_HANDLER_H
#define EFUSE_HANDLER_H

#ifndef __VMLINUX_H__
#include <linux/ioctl.h>
#include <linux/types.h>
#endif

/* Bytes of a name handed to a handler, with its terminating NUL. */
#define EFUSE_HANDLER_NAME_MAX 256
/* Bytes of reply body a handler can answer with. */
#define EFUSE_HANDLER_DATA_MAX 256

/*
 * The handler ABI: this layout, and what user space (efused) asks of a
 * handler object beyond it. A handler object records the version it was
 * built for; a loader refuses an object built for another one. Bump it with
 * any change either side could notice. It starts at 3: 1 and 2 stand for
 * the unversioned ABIs before it (GETATTR and negative LOOKUP answers; then
 * positive LOOKUP entries, GETXATTR and LISTXATTR answers, and the size of
 * a LISTXATTR request). 4: READ requests fire efuse_handler_read with a
 * struct efuse_handler_read_ctx, and READ can be answered with file data
 * (kmod patch 0011); OPEN and FLUSH answers, EFUSE_HANDLER_KERNEL_FH and
 * EFUSE_HANDLER_FLUSH_KERNEL_OPEN (0012). 5: FLUSH of an open the server
 * answered in passthrough mode, EFUSE_HANDLER_FLUSH_PASSTHROUGH (0013).
 * 6: STATFS answers (0014). 7: RELEASE of the server's opens reaches
 * handlers, with the open's fh, flags and release flags (0015). 8: ACCESS
 * answers; an ACCESS request's mask is in.flags (0017).
 */
#define EFUSE_HANDLER_ABI_VERSION 8

/*
 * The fh of an open a handler answered (FUSE_OPEN): set by the module, not
 * taken from the answer (whose fh must be 0): these two bits, and below them
 * the open's kernel handle number, unique on the connection. A server whose
 * handlers answer opens never gives out an fh with both bits set, and meets
 * such an fh in the requests of that open (FLUSH when a handler did not
 * answer it, locks, FSYNC, ...; RELEASE only to undo a flock).
 */
#define EFUSE_HANDLER_KERNEL_FH (3ULL << 62)
/* in.flags of a FLUSH: the file's open was answered by a handler. */
#define EFUSE_HANDLER_FLUSH_KERNEL_OPEN 1
/*
 * in.flags of a FLUSH: the server answered the file's open, in passthrough
 * mode, and the backing file has no flush method: the file's data never
 * went through the server, and closing the backing file reports nothing.
 */
#define EFUSE_HANDLER_FLUSH_PASSTHROUGH 2

/*
 * ioctl on the server's device (/dev/efuse) descriptor: a __u64 whose bit
 * n says that the server's handlers answer opcode n. Requests of the
 * opcodes below 64 whose bit is clear go up as if no handler were
 * attached, without a buffer allocated or a handler run for them, and are
 * not counted (/sys/fs/efuse/handler). Until a server says, every opcode
 * is shown. Not part of the handler ABI: handlers see nothing new.
 */
#define EFUSE_DEV_IOC_HANDLER_OPCODES _IOW(229, 64, __u64)

/* out.verdict */
#define EFUSE_HANDLER_UPCALL 0	/* queue the request for the server */
#define EFUSE_HANDLER_ANSWER 1	/* complete it with out.answer */

/*
 * Module-wide counters, /sys/fs/efuse/handler/<name>: requests answered by
 * a handler, and requests that went up although a handler was attached,
 * by reason. The bad_* reasons are answers the module refused.
 */
enum efuse_handler_stat {
	EFUSE_HANDLER_STAT_ANSWERED,	 /* answered: the handler's answer */
	EFUSE_HANDLER_STAT_DECLINED,	 /* declined: handlers let it go up */
	EFUSE_HANDLER_STAT_NO_MEMORY,	 /* no_memory: no buffer for them */
	EFUSE_HANDLER_STAT_DISCONNECTED, /* disconnected: connection died */
	EFUSE_HANDLER_STAT_BAD_VERDICT,	 /* bad_verdict: no EFUSE_HANDLER_* */
	EFUSE_HANDLER_STAT_BAD_NODEID,	 /* bad_nodeid: not the request's */
	EFUSE_HANDLER_STAT_BAD_ERROR,	 /* bad_error: not for this opcode */
	EFUSE_HANDLER_STAT_BAD_SIZE,	 /* bad_size: not the reply's size */
	EFUSE_HANDLER_STAT_BAD_OPCODE,	 /* bad_opcode: opcode not answered */
	EFUSE_HANDLER_STAT_BAD_REPLY,	 /* bad_reply: body failed checks */
	EFUSE_HANDLER_NR_STATS
};

/* What a handler learns about the request. */
struct efuse_handler_in {
	__u32 opcode;
	__u32 uid;		/* the caller's, as the server would see them */
	__u32 gid;
	__u32 pid;
	__u64 nodeid;
	__u64 offset;		/* READ; RELEASE: the open's fh */
	__u32 size;		/* READ, GETXATTR, LISTXATTR; RELEASE: release_flags */
	__u32 flags;		/* OPEN, READ, RELEASE, ACCESS; FLUSH: EFUSE_HANDLER_FLUSH_* */
	__u32 namelen;		/* LOOKUP, GETXATTR: bytes in name, no NUL */
	__u32 conn;		/* the connection: /sys/fs/efuse/connections/<conn> */
	char name[EFUSE_HANDLER_NAME_MAX];	/* NUL-terminated, zero-filled */
};

/* A whole answer: what user space stores in a handler's map, ready to copy. */
struct efuse_handler_answer {
	__u64 nodeid;		/* the node answered for: must be in.nodeid */
	__s32 error;		/* 0, or the negative errno the request ends with */
	__u32 size;		/* bytes of data: the reply body */
	__u8 data[EFUSE_HANDLER_DATA_MAX];
};

struct efuse_handler_out {
	__u32 verdict;		/* EFUSE_HANDLER_* */
	__u32 turn;		/* zeroed; the handlers' own, the module never reads it */
	struct efuse_handler_answer answer;
};

struct efuse_handler_ctx {
	struct efuse_handler_in in;
	struct efuse_handler_out out;
};

/*
 * READ (ABI 4). File data does not fit out.answer.data, so READ requests
 * fire the writable tracepoint efuse_handler_read instead of
 * efuse_handler, with this buffer: the same head, then room for the file
 * blocks a read touches. The buffer is allocated for READ requests only,
 * and only while something is attached to efuse_handler_read.
 *
 * A handler answers a READ of in.size bytes at in.offset with
 * out.answer.size bytes (error 0), placed in blocks from
 * in.offset % EFUSE_HANDLER_BLOCK_SIZE on: blocks starts with the file
 * block in.offset falls in, so whole stored blocks are copied to fixed
 * offsets. The module takes the answer only when its size is at most the
 * request's and fits blocks, and the read is short only at the end of the
 * file as the kernel knows it (i_size): size is exactly
 * min(in.size, i_size - in.offset), or 0 at or past the end.
 */
#define EFUSE_HANDLER_BLOCK_SIZE 4096
#define EFUSE_HANDLER_READ_BLOCKS 9
/* The longest READ answered whatever its offset (a longer one at EOF too). */
#define EFUSE_HANDLER_READ_MAX \
	((EFUSE_HANDLER_READ_BLOCKS - 1) * EFUSE_HANDLER_BLOCK_SIZE)

struct efuse_handler_read_ctx {
	struct efuse_handler_ctx head;
	__u8 blocks[EFUSE_HANDLER_READ_BLOCKS * EFUSE_HANDLER_BLOCK_SIZE];
};

#ifdef __cplusplus
static_assert(sizeof(struct efuse_handler_read_ctx) ==
	      sizeof(struct efuse_handler_ctx) +
	      EFUSE_HANDLER_READ_BLOCKS * EFUSE_HANDLER_BLOCK_SIZE,
	      "efuse_handler_read_ctx layout");
static_assert(sizeof(struct efuse_handler_in) == 48 + EFUSE_HANDLER_NAME_MAX,
	      "efuse_handler_in layout");
static_assert(sizeof(struct efuse_handler_answer) == 16 + EFUSE_HANDLER_DATA_MAX,
	      "efuse_handler_answer layout");
static_assert(sizeof(struct efuse_handler_ctx) ==
	      48 + EFUSE_HANDLER_NAME_MAX + 24 + EFUSE_HANDLER_DATA_MAX,
	      "efuse_handler_ctx layout");
#endif

#endif /* EFUSE_HANDLER_H */
