// FUSE-over-io_uring wire facts (protocol 7.42+), taken from the kernel's
// include/uapi/linux/fuse.h and checked against the running kernel's BTF
// (`bpftool btf dump file /sys/kernel/btf/vmlinux format c`, Linux 6.18):
//
//   struct fuse_uring_ent_in_out { u64 flags; u64 commit_id; u32 payload_sz; u32 padding;
//                                  u64 reserved; };                                 // 32 B
//   struct fuse_uring_req_header { char in_out[128]; char op_in[128];
//                                  struct fuse_uring_ent_in_out ring_ent_in_out; };  // 288 B
//   struct fuse_uring_cmd_req    { u64 flags; u64 commit_id; u16 qid; u8 padding[6]; }; // 24 B
//   enum fuse_uring_cmd { INVALID = 0, REGISTER = 1, COMMIT_AND_FETCH = 2 };
//
// How the kernel uses them (fs/fuse/dev_uring.c):
// - Each ring entry is registered with IORING_OP_URING_CMD (cmd_op REGISTER) on the /dev/fuse
//   fd; sqe->addr points at two iovecs: [0] a fuse_uring_req_header, [1] a payload buffer of
//   at least max(FUSE_MIN_READ_BUFFER, max_write, max_pages * PAGE_SIZE) bytes. The
//   fuse_uring_cmd_req lives in the SQE's command area, so rings need IORING_SETUP_SQE128.
// - A request completes the entry's pending command with res 0: in_out holds the
//   fuse_in_header, op_in the op's first (fixed-size) in-argument, the payload buffer the
//   remaining in-arguments (names, write data, extensions), ring_ent_in_out.payload_sz their
//   size and commit_id the request's unique. in_header.len covers all of them.
// - The reply goes back with cmd_op COMMIT_AND_FETCH: fuse_out_header in in_out, every
//   out-argument in the payload buffer (payload_sz set), cmd_req.commit_id = commit_id. The
//   same command waits for the entry's next request (no CQE until then).
// - Queues: one per possible CPU (qid < num_possible_cpus()); requests go to the queue of the
//   CPU the caller runs on. The kernel switches to the rings only once every queue has at
//   least one registered entry; until then, with io_uring granted at INIT, new requests wait.
//   A failed REGISTER makes the kernel drop io_uring for the connection (fc->io_uring = 0)
//   and serve everything over /dev/fuse again, as long as the rings never became ready.
// - FORGET / BATCH_FORGET and INTERRUPT still come over /dev/fuse, and notifications (unique
//   0) must still be written to /dev/fuse: the rings reject them.
// - Teardown: commands waiting for a request complete with -ENOTCONN (connection ended) or
//   -ECANCELED (ring task gone); a commit on a stopped queue fails with -ENOTCONN.
#pragma once

#include <cstddef>
#include <cstdint>

#include "fuse/kernel.h"

namespace fuse::kernel {

enum class UringCmd : uint32_t {
  Invalid = 0,
  Register = 1,
  CommitAndFetch = 2,
};

struct fuse_uring_ent_in_out {
  uint64_t flags;
  uint64_t commit_id;  // the request's unique; echoed in fuse_uring_cmd_req.commit_id
  uint32_t payload_sz;  // bytes used in the payload buffer (request, then reply)
  uint32_t padding;
  uint64_t reserved;
};

inline constexpr size_t kUringHeaderArea = 128;  // in_out and op_in are 128 bytes each

struct fuse_uring_req_header {
  char in_out[kUringHeaderArea];  // fuse_in_header (request) / fuse_out_header (reply)
  char op_in[kUringHeaderArea];   // the op's first in-argument (fuse_read_in, ...)
  fuse_uring_ent_in_out ring_ent_in_out;
};

struct fuse_uring_cmd_req {
  uint64_t flags;
  uint64_t commit_id;
  uint16_t qid;
  uint8_t padding[6];
};

inline constexpr unsigned kUringIovSegs = 2;          // header, payload
inline constexpr size_t kSqe128CmdSize = 80;         // command bytes in a 128-byte SQE
inline constexpr size_t kMinReadBufferKernel = 8192;  // FUSE_MIN_READ_BUFFER
inline constexpr const char* kEnableUringParam = "/sys/module/fuse/parameters/enable_uring";

static_assert(sizeof(fuse_uring_ent_in_out) == 32);
static_assert(sizeof(fuse_uring_req_header) == 288);
static_assert(offsetof(fuse_uring_req_header, op_in) == 128);
static_assert(offsetof(fuse_uring_req_header, ring_ent_in_out) == 256);
static_assert(offsetof(fuse_uring_ent_in_out, payload_sz) == 16);
static_assert(sizeof(fuse_uring_cmd_req) == 24);
static_assert(offsetof(fuse_uring_cmd_req, qid) == 16);
static_assert(sizeof(fuse_uring_cmd_req) <= kSqe128CmdSize);
static_assert(sizeof(fuse_in_header) <= kUringHeaderArea);
static_assert(sizeof(fuse_out_header) <= kUringHeaderArea);

}  // namespace fuse::kernel
