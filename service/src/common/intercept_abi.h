// What efused publishes for libefuse_intercept.so (service/src/intercept/), and the
// counters the library adds to. Plain C layout, shared by efused (daemon layer) and the
// library; both sides check magic, version and size before using a file.
//
// Directory: $EFUSE_INTERCEPT_DIR, default /run/efuse/intercept. In it:
//   generation       8-byte counter (in a 4 KiB file) efused bumps whenever it publishes
//                    or withdraws a mount; the library maps it and rescans when it moves.
//   m-<hash>.rec     one record per mount with `intercept: true` (mode 0644, efused's);
//                    <hash> is the FNV-1a hash of the mountpoint, so two efused instances
//                    never share a record.
//   counts/          mode 01733 (sticky; every user may create files, none may list the
//                    directory or remove or write another user's files): the counters, one
//     m-<hash>-<pid>-<generation>.<uid>   file per user and publication (struct
//                    efuse_intercept_counters, mode 0644), created by that user's library
//                    (owned by <uid>; efused ignores a file owned by anyone else) and summed
//                    by efused, each as far as it ever went, so a user can only add calls
//                    of their own (which they could make anyway). <pid> and <generation>
//                    are the record's.
//   alive-<pid>-<start>  one per efused (4 KiB, mode 0644): a process-shared robust pthread
//                    mutex at offset 0 that one thread of efused locks before its first
//                    record is published and holds until the process ends. When efused
//                    exits, however it exits (kill -9 too), the kernel clears the owner's
//                    TID in the mutex's futex word (its first 32 bits; robust futex list),
//                    so the library tells a running efused from a dead one with one load,
//                    no system call. <start> is pid_start below.
//   mounts-<pid>-<start>  (mode 0644, efused's) a copy of efused's /proc/self/mountinfo
//                    after a line "efuse-mounts <root st_dev> <root st_ino> <mnt ns inode>",
//                    rewritten (and only then the generation bumped) whenever the table
//                    changes: a library with the same root, whose published mounts carry the
//                    mount ids it sees (so: the same mount namespace), reads it instead of
//                    its own mountinfo, which costs far more to generate.
//   m-<hash>-<pid>.sock  (mode 0666, efused's; only on mounts with
//                    EFUSE_IR_WRITES, EFUSE_IR_OPENS or EFUSE_IR_NODES) a SOCK_SEQPACKET
//                    socket efused listens on while the record is published: the library tells efused,
//                    before its call returns, about every backing file it opened for writing
//                    or whose attributes it changed (struct efuse_intercept_request, the
//                    file's descriptor attached with SCM_RIGHTS), so the kernel's caches of
//                    the mount never show what the file was before, and asks efused to open
//                    a file it cannot open itself, with its credentials (EFUSE_IREQ_OPEN, the
//                    hand-over), and on memory mounts (EFUSE_IR_NODES) for the data file
//                    of a file it opened O_PATH through the mount (EFUSE_IREQ_OPEN_NODE)
//                    (docs/intercept.md has the contract). efused checks the peer
//                    with SO_PEERCRED (allow_other: false takes only its own user and root);
//                    the library checks that the peer is the record's efused.
#pragma once

#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define EFUSE_INTERCEPT_MAGIC 0x3152494553554645ull  // "EFUSEIR1"
#define EFUSE_INTERCEPT_VERSION 1u
#define EFUSE_INTERCEPT_DEFAULT_DIR "/run/efuse/intercept"
#define EFUSE_INTERCEPT_PATH_MAX 1024
#define EFUSE_INTERCEPT_COUNTS_DIR "counts"
#define EFUSE_INTERCEPT_ALIVE_SIZE 4096u
#define EFUSE_INTERCEPT_ALIVE_TID_MASK 0x3fffffffu  // FUTEX_TID_MASK

// efuse_intercept_record.flags
#define EFUSE_IR_LIVE 0x1u        // efused serves the mount; cleared before it unmounts
#define EFUSE_IR_READ_ONLY 0x2u   // options.read_only
#define EFUSE_IR_ALLOW_OTHER 0x4u  // options.allow_other
#define EFUSE_IR_SERVE 0x8u       // the library may serve it (passthrough backend with
                                  // default_permissions); else it only counts kernel calls
#define EFUSE_IR_FILES_GO_ON 0x10u  // withdrawn (LIVE clear) while the mount goes on:
                                    // descriptors the library opened keep working
#define EFUSE_IR_WRITES 0x20u  // efused listens on the .sock: the library may open files for
                               // writing and change attributes (never with READ_ONLY)
#define EFUSE_IR_OPENS 0x40u   // efused listens on the .sock and opens files for a caller that
                               // cannot open the backing file itself (EFUSE_IREQ_OPEN)
#define EFUSE_IR_NODES 0x80u   // a memory mount whose file data lives in files of efused's
                               // private tmpfs: efused listens on the .sock and opens a file's
                               // data file for reading for a caller that sends a descriptor of
                               // the file opened O_PATH through the mount (EFUSE_IREQ_OPEN_NODE);
                               // never with EFUSE_IR_SERVE (there is no backing directory)

struct efuse_intercept_record {
  uint64_t magic;
  uint32_t version;
  uint32_t size;        // sizeof(struct efuse_intercept_record)
  uint32_t flags;       // EFUSE_IR_*; written last when publishing (release order)
  int32_t pid;          // efused
  uint64_t pid_start;   // efused's start time (field 22 of /proc/PID/stat), against PID reuse
  uint64_t generation;  // the mount's start count in this efused (a remount bumps it)
  uint32_t uid;         // efused's uid (the mount's owner for allow_other: false)
  uint32_t dev_major;   // st_dev the mount reports (0:conn_id)
  uint32_t dev_minor;
  uint32_t reserved;
  uint64_t data_dev;    // EFUSE_IR_NODES: st_dev of the data files efused hands out (0 else),
                        // so the library knows one inherited across exec
  char mountpoint[EFUSE_INTERCEPT_PATH_MAX];  // canonical, no trailing '/'
  char source[EFUSE_INTERCEPT_PATH_MAX];      // backing directory (empty for memory)
};

// Requests on the .sock: one message each way; each request carries exactly one
// descriptor of a regular backing file.
#define EFUSE_IREQ_WRITING 1u  // opened for writing (the descriptor is that open): efused
                               // drops what the kernel caches of the file and caches none of
                               // its attributes or pages until no open for writing remains
#define EFUSE_IREQ_CHANGED 2u  // its attributes, ACLs or xattrs were just changed through
                               // the descriptor: efused drops the kernel's copy
#define EFUSE_IREQ_OPEN 3u     // struct efuse_intercept_open, no descriptor attached: efused
                               // opens the regular file at `path` under the mount's backing
                               // directory with the caller's credentials (SO_PEERCRED's uid and
                               // gid, SO_PEERGROUPS' groups: as the kernel checks them through
                               // the mount) and answers with the descriptor attached (for
                               // writing: marked as an EFUSE_IREQ_WRITING one would be)

#define EFUSE_IREQ_OPEN_NODE 4u  // struct efuse_intercept_open with path_len 0 (24 bytes) and
                                 // exactly one descriptor attached: a regular file of the mount
                                 // opened O_PATH through the mount (the kernel walked the path
                                 // with the caller's credentials). efused checks the caller's
                                 // credentials (SO_PEERCRED, SO_PEERGROUPS) against the file's
                                 // mode and POSIX ACL as the kernel's default_permissions check
                                 // does, without capabilities (what it refuses, the kernel
                                 // answers), and answers with the file's data file opened with
                                 // `flags` (O_RDONLY only) attached. EFUSE_IR_NODES mounts only.

struct efuse_intercept_request {
  uint64_t magic;  // EFUSE_INTERCEPT_MAGIC
  uint32_t version;
  uint32_t op;     // EFUSE_IREQ_*
};

// EFUSE_IREQ_OPEN: the request, then `path_len` bytes of path (no NUL), relative to the
// mount's root (no leading '/'), sent as one message of 24 + path_len bytes.
// The flags efused applies; O_CREAT, O_EXCL, O_TRUNC (the library truncates once efused
// answered), O_DIRECT, O_NOATIME, O_PATH, O_TMPFILE and the rest are refused (EINVAL).
#define EFUSE_IOPEN_FLAGS                                                          \
  (O_ACCMODE | O_APPEND | O_NONBLOCK | O_DSYNC | O_SYNC | O_CLOEXEC | O_NOCTTY | \
   0100000 /* O_LARGEFILE as the kernel has it */)
struct efuse_intercept_open {
  struct efuse_intercept_request head;  // op EFUSE_IREQ_OPEN
  uint32_t flags;                       // open(2) flags within EFUSE_IOPEN_FLAGS
  uint32_t path_len;                    // 1 .. EFUSE_INTERCEPT_PATH_MAX - 1
  char path[EFUSE_INTERCEPT_PATH_MAX];
};

struct efuse_intercept_reply {
  int32_t error;  // 0, or the errno of the refusal (the library then lets the kernel serve)
  uint32_t reserved;
};

// Attaches descriptor `fd` to `msg` (SCM_RIGHTS); `control` holds CMSG_SPACE(sizeof(int))
// bytes aligned for struct cmsghdr.
static inline void efuse_intercept_attach(struct msghdr* msg, char* control, int fd) {
  memset(control, 0, CMSG_SPACE(sizeof(int)));
  msg->msg_control = control;
  msg->msg_controllen = CMSG_SPACE(sizeof(int));
  struct cmsghdr* c = CMSG_FIRSTHDR(msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof fd);
}

// Fills `msg` to send `len` bytes at `data` through `iov`, with descriptor `fd` attached
// when it is not negative (`control` as above).
static inline void efuse_intercept_prepare(struct msghdr* msg, struct iovec* iov, void* data,
                                           size_t len, char* control, int fd) {
  iov->iov_base = data;
  iov->iov_len = len;
  memset(msg, 0, sizeof *msg);
  msg->msg_iov = iov;
  msg->msg_iovlen = 1;
  if (fd >= 0) efuse_intercept_attach(msg, control, fd);
}

// Fills `msg` to send request `op` (in `req`, through `iov`) with descriptor `fd` attached.
static inline void efuse_intercept_message(struct msghdr* msg, struct iovec* iov,
                                           struct efuse_intercept_request* req, uint32_t op,
                                           char* control, int fd) {
  req->magic = EFUSE_INTERCEPT_MAGIC;
  req->version = EFUSE_INTERCEPT_VERSION;
  req->op = op;
  efuse_intercept_prepare(msg, iov, req, sizeof *req, control, fd);
}

// A well-formed EFUSE_IREQ_OPEN of `len` bytes (its head already checked).
static inline int efuse_intercept_open_ok(const struct efuse_intercept_open* o, size_t len) {
  const size_t head = sizeof(struct efuse_intercept_request) + 2 * sizeof(uint32_t);
  return len > head && o->path_len == len - head && o->path_len < EFUSE_INTERCEPT_PATH_MAX &&
         o->path[0] != '/' && memchr(o->path, '\0', o->path_len) == NULL &&
         (o->flags & ~(uint32_t)(EFUSE_IOPEN_FLAGS)) == 0 &&
         (o->flags & O_ACCMODE) != O_ACCMODE;
}

// A well-formed EFUSE_IREQ_OPEN_NODE of `len` bytes (its head already checked; the
// descriptor is counted by the receiver).
static inline int efuse_intercept_open_node_ok(const struct efuse_intercept_open* o, size_t len) {
  return len == sizeof(struct efuse_intercept_request) + 2 * sizeof(uint32_t) &&
         o->path_len == 0 && (o->flags & ~(uint32_t)(EFUSE_IOPEN_FLAGS | O_NOFOLLOW)) == 0 &&
         (o->flags & O_ACCMODE) == O_RDONLY;
}

// Counters, by operation and by who served the call.
#define EFUSE_INTERCEPT_OPS(X) \
  X(open) X(close) X(read) X(write) X(lseek) X(stat) X(access) X(readdir)

enum efuse_intercept_op {
#define EFUSE_IOP_ENUM(name) EFUSE_IOP_##name,
  EFUSE_INTERCEPT_OPS(EFUSE_IOP_ENUM)
#undef EFUSE_IOP_ENUM
  EFUSE_IOP_COUNT
};

// [0][op]: served by the library; [1][op]: passed to the kernel (the FUSE mount).
struct efuse_intercept_counters {
  uint64_t magic;
  uint32_t version;
  uint32_t size;
  uint64_t calls[2][EFUSE_IOP_COUNT];  // updated with atomic adds by every process
};

#ifdef __cplusplus
static_assert(sizeof(struct efuse_intercept_record) == 64 + 2 * EFUSE_INTERCEPT_PATH_MAX,
              "record layout");
static_assert(sizeof(struct efuse_intercept_counters) == 16 + 16 * EFUSE_IOP_COUNT,
              "counters layout");
static_assert(sizeof(struct efuse_intercept_request) == 16, "request layout");
static_assert(sizeof(struct efuse_intercept_reply) == 8, "reply layout");
static_assert(sizeof(struct efuse_intercept_open) == 24 + EFUSE_INTERCEPT_PATH_MAX, "open layout");
#endif
