#include "fuse/reply.h"

#include <cerrno>
#include <cstring>

#include "common/log.h"
#include "fuse/kernel.h"
#include "fuse/opcodes.h"
#include "fuse/session.h"

namespace fuse {

int send_reply(Transport& out, uint64_t unique, int err, std::span<const struct iovec> payload) {
  kernel::fuse_out_header oh{};
  oh.unique = unique;
  struct iovec iov[1 + kMaxReplyPieces];
  iov[0] = {&oh, sizeof oh};
  int count = 1;
  int rc = 0;
  if (payload.size() > static_cast<size_t>(kMaxReplyPieces)) {
    LOG_ERROR("BUG: a reply of %zu pieces (at most %d); answering EIO", payload.size(),
              kMaxReplyPieces);
    err = EIO;
    rc = -E2BIG;
  } else {
    for (const struct iovec& piece : payload) iov[count++] = piece;
  }
  size_t len = 0;
  for (int i = 0; i < count; ++i) len += iov[i].iov_len;
  oh.len = static_cast<uint32_t>(len);
  oh.error = -err;
  int sent = out.send(iov, count);
  return rc != 0 ? rc : sent;
}

DeferredReply& DeferredReply::operator=(DeferredReply&& o) noexcept {
  if (this != &o) {
    if (pending()) reply_err(EIO);
    session_ = o.session_;
    out_ = o.out_;
    unique_ = o.unique_;
    opcode_ = o.opcode_;
    start_ns_ = o.start_ns_;
    o.out_ = nullptr;
    o.session_ = nullptr;
  }
  return *this;
}

DeferredReply::~DeferredReply() {
  if (!pending()) return;
  LOG_ERROR("BUG: a deferred %s (unique %llu) was dropped without a reply; answering EIO",
            opcode_name(opcode_), static_cast<unsigned long long>(unique_));
  reply_err(EIO);
}

void DeferredReply::reply(int err, std::span<const struct iovec> payload) {
  if (!pending()) return;
  Transport* out = out_;
  Session* session = session_;
  out_ = nullptr;
  session_ = nullptr;
  // Recorded first, so whoever sees the reply sees it counted.
  session->deferred_answered(opcode_, start_ns_, err);
  if (err != 0) payload = {};
  int rc = send_reply(*out, unique_, err, payload);
  // ENOENT: the request was interrupted and the kernel no longer waits; not an error.
  if (rc < 0 && rc != -ENOENT)
    LOG_DEBUG("deferred reply to %s (unique %llu) failed: %s", opcode_name(opcode_),
              static_cast<unsigned long long>(unique_), strerror(-rc));
}

}  // namespace fuse
