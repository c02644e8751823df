// Session internals shared by session*.cpp (not part of the Session interface): one
// request being handled, and the decoding macros of its handlers.
#pragma once

#include <fcntl.h>

#include <cstring>
#include <optional>
#include <span>
#include <string_view>

#include "common/log.h"
#include "fs/filesystem.h"
#include "fuse/kernel.h"
#include "fuse/opcodes.h"
#include "fuse/reply.h"
#include "fuse/kernel_answers.h"
#include "fuse/session.h"
#include "fuse/wire.h"

namespace fuse {

// The names every handler file uses (this header is private to session*.cpp).
using efuse::Errno;
using efuse::Result;
using efuse::Status;
namespace k = kernel;
namespace fs = efuse::fs;

// An open's flags ask for writing (O_WRONLY, O_RDWR): its node's answers are not kept while
// it lasts (KernelAnswers::write_opened, write_released).
inline bool for_writing(uint32_t flags) { return (flags & O_ACCMODE) != O_RDONLY; }

// A RENAME or RENAME2 request's body (RENAME has no flags).
struct RenameIn {
  uint64_t newdir = 0;
  uint32_t flags = 0;
  std::string_view from, to;
};
inline std::optional<RenameIn> take_rename(uint32_t opcode, Reader& in) {
  RenameIn rn;
  if (opcode == static_cast<uint32_t>(k::Opcode::Rename)) {
    auto rin = in.take<k::fuse_rename_in>();
    if (!rin) return std::nullopt;
    rn.newdir = rin->newdir;
  } else {
    auto rin = in.take<k::fuse_rename2_in>();
    if (!rin) return std::nullopt;
    rn.newdir = rin->newdir;
    rn.flags = rin->flags;
  }
  auto from = in.take_name();
  auto to = from ? in.take_name() : std::nullopt;
  if (!to) return std::nullopt;
  rn.from = *from;
  rn.to = *to;
  return rn;
}

struct Session::Request {
  k::fuse_in_header hdr;
  Reader body;
  Transport& out;
  std::span<char> scratch;
  fs::Context ctx;
  uint64_t start_ns = 0;
  bool replied = false;
  bool deferred = false;  // a DeferredReply answers (and records) it
  int error = 0;
  // The kernel module tier (KernelAnswers): the request body as sent, for keep_answers(),
  // and the sequence number taken before a GETATTR or LOOKUP asked the backend.
  Session* session = nullptr;
  KernelAnswers* answers = nullptr;
  std::span<const char> raw;
  uint64_t answers_since = 0;
  // READ: the file's size and mtime taken before its bytes were read (for the READ block
  // cache; read_attrs false when not taken).
  FileStamp read_stamp;
  bool read_attrs = false;

  void send(const struct iovec* payload, int n, int err = 0) {
    if (answers != nullptr) session->keep_answers(*this, payload, n, err);
    int rc = send_reply(out, hdr.unique, err, {payload, static_cast<size_t>(n)});
    // ENOENT: the request was interrupted and the kernel no longer waits; not an error.
    if (rc < 0 && rc != -ENOENT)
      LOG_DEBUG("reply to %s (unique %llu) failed: %s", opcode_name(hdr.opcode),
                static_cast<unsigned long long>(hdr.unique), strerror(-rc));
    replied = true;
    error = rc == -E2BIG ? EIO : err;
  }
  void reply_err(int err) { send(nullptr, 0, err); }
  void reply_ok() { send(nullptr, 0, 0); }
  void reply(const void* data, size_t len) {
    struct iovec iov{const_cast<void*>(data), len};
    send(&iov, 1);
  }
  template <class T>
  void reply(const T& v) { reply(&v, sizeof v); }
  void none() { replied = true; }  // FORGET, BATCH_FORGET, INTERRUPT take no reply
};

// Malformed request body: the kernel never sends one, so a forged or truncated request is
// answered with EINVAL and counted.
#define TAKE(var, type)               \
  auto var = r.body.take<type>();     \
  if (!var) return malformed(r);
#define TAKE_NAME(var)                \
  auto var = r.body.take_name();      \
  if (!var) return malformed(r);

}  // namespace fuse
