// The reply path of one request: where its reply goes (Transport), how a reply is framed
// (send_reply), and the token a handler holds when it answers later (DeferredReply).
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <span>

namespace fuse {

// Where one request's reply goes: the /dev/fuse fd it was read from (classic) or the
// io_uring entry it arrived in. Nothing connection-wide (see connection.h).
class Transport {
 public:
  virtual ~Transport() = default;
  // Sends one reply (iov[0] is the fuse_out_header); returns 0 or -errno.
  virtual int send(const struct iovec* iov, int count) = 0;
  // The request's reply will come later, possibly from another thread, through send():
  // keep what send() needs (an io_uring entry stays parked) until then.
  virtual void defer() {}
};

// Payload pieces one reply may carry besides its header.
inline constexpr int kMaxReplyPieces = 4;

// Sends fuse_out_header {len, -err, unique} followed by `payload`. More than
// kMaxReplyPieces pieces is a bug: an EIO reply goes instead and -E2BIG is returned.
// Otherwise returns what Transport::send returned.
int send_reply(Transport& out, uint64_t unique, int err, std::span<const struct iovec> payload);

class Session;

// Owed by a handler that answers later (a blocking lock wait, a request moved off its
// queue: fuse/session_blocking.cpp): the request's reply,
// and with it what its transport holds for it (an io_uring entry; nothing on /dev/fuse).
// Move-only. Exactly one reply: reply_err() answers once; a token destroyed unanswered
// answers EIO and logs (the session's one-reply-per-request backstop, for deferred
// requests). The session records the request's latency and errno when it is answered.
// The Transport and Session must outlive the token (Session::shutdown waits for its own
// deferred work; channels call it before their transports go).
class DeferredReply {
 public:
  DeferredReply() = default;
  DeferredReply(DeferredReply&& o) noexcept { *this = static_cast<DeferredReply&&>(o); }
  DeferredReply& operator=(DeferredReply&& o) noexcept;
  DeferredReply(const DeferredReply&) = delete;
  DeferredReply& operator=(const DeferredReply&) = delete;
  ~DeferredReply();

  bool pending() const { return out_ != nullptr; }
  uint64_t unique() const { return unique_; }
  // Answers with `err` (0: success, no payload). Does nothing when already answered.
  void reply_err(int err) { reply(err, {}); }
  // Answers with `err` and, when 0, `payload` (at most kMaxReplyPieces pieces; the bytes
  // are sent before this returns). Does nothing when already answered.
  void reply(int err, std::span<const struct iovec> payload);

 private:
  friend class Session;
  DeferredReply(Session& s, Transport& out, uint64_t unique, uint32_t opcode, uint64_t start_ns)
      : session_(&s), out_(&out), unique_(unique), opcode_(opcode), start_ns_(start_ns) {}

  Session* session_ = nullptr;
  Transport* out_ = nullptr;
  uint64_t unique_ = 0;
  uint32_t opcode_ = 0;
  uint64_t start_ns_ = 0;
};

}  // namespace fuse
