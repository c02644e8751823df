// Session: requests that may block (FSYNC, FSYNCDIR, FALLOCATE, a truncating CREATE or
// SETATTR), served inline or on the mount's offload pool so that they do not hold up the
// requests queued behind them on the same io_uring queue or /dev/fuse worker
// (accel/offload.h decides which, from what each way cost; fuse/offload_pool.h runs them).
#include "fuse/session.h"

#include <memory>

#include "common/log.h"
#include "fuse/session_request.h"

namespace fuse {

namespace accel = efuse::accel;

namespace {

// The kernel module tier keeps its maps exact from each reply together with the request as
// the kernel sent it (Session::keep_answers); a deferred reply carries neither, so requests
// whose replies change what the maps hold are not moved off their queue there.
bool changes_kernel_answers(accel::Blocking kind) {
  return kind != accel::Blocking::Fsync && kind != accel::Blocking::Fsyncdir;
}

}  // namespace

void Session::serve_blocking(Request& r, accel::Blocking kind,
                             std::function<BlockingAnswer()> op) {
  auto answer = [&r](const BlockingAnswer& a) {
    if (a.err != 0) return r.reply_err(a.err);
    r.reply(a.body.data(), a.len);
  };
  if (!opts_.queue_balancing || (r.answers != nullptr && changes_kernel_answers(kind)))
    return answer(op());
  const uint64_t start = monotonic_ns();
  accel::Choice c = offload_.choose(kind, static_cast<int64_t>(start));
  if (c.path == static_cast<int>(accel::Serve::Inline)) {
    BlockingAnswer a = op();
    const uint64_t end = monotonic_ns();
    offload_.measured(kind, accel::Serve::Inline, end - start, static_cast<int64_t>(end));
    return answer(a);
  }
  // The pool's Task must be copyable: the token travels in a shared_ptr. It answers EIO if
  // the task is destroyed unrun (the pool stopped with no thread left to run it).
  auto token = std::make_shared<DeferredReply>(defer(r));
  auto reply_with = [](DeferredReply& t, const BlockingAnswer& a) {
    struct iovec iov{const_cast<char*>(a.body.data()), a.len};
    t.reply(a.err, {&iov, a.len != 0 ? 1u : 0u});
  };
  OffloadPool::Task task = [this, token, op, kind, start, reply_with] {
    const uint64_t began = monotonic_ns();
    // What offloading cost: the time until a pool thread took it.
    offload_.measured(kind, accel::Serve::Offload, began - start, static_cast<int64_t>(began));
    reply_with(*token, op());
  };
  if (pool_.submit(task)) return;
  // The pool did not take it (full, stopping, no thread could start): served here after
  // all, answered through its token. Not measured: the engine asked for the other way.
  offload_.dropped(kind, accel::Serve::Offload);
  reply_with(*token, op());
}

}  // namespace fuse
