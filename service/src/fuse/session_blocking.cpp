// Session: requests that may block (FSYNC, FSYNCDIR), served inline or on a thread of their
// own so that they do not hold up the requests queued behind them on the same io_uring queue
// or /dev/fuse worker (accel/offload.h decides which, from what each way cost).
#include "fuse/session.h"

#include <memory>
#include <thread>

#include "common/log.h"
#include "common/thread_name.h"
#include "fuse/session_request.h"

namespace fuse {

namespace accel = efuse::accel;

// An offloaded request: its deferred reply, counted as a waiter so that shutdown() waits
// for it (the backend must outlive the thread).
struct Session::Offloaded {
  Session& session;
  DeferredReply reply;
  ~Offloaded() {
    { DeferredReply dropped = std::move(reply); }  // answers EIO if the work never ran
    std::lock_guard lk(session.waits_mu_);
    --session.waiters_;
    session.waits_cv_.notify_all();
  }
};

void Session::serve_blocking(Request& r, accel::Blocking kind, std::function<int()> op) {
  if (!opts_.queue_balancing) return r.reply_err(op());
  const uint64_t start = monotonic_ns();
  accel::Choice c = offload_.choose(kind, static_cast<int64_t>(start));
  bool offload = c.path == static_cast<int>(accel::Serve::Offload);
  if (offload) {
    std::lock_guard lk(waits_mu_);
    if (stopping_ || waiters_ >= 1024) offload = false;  // stopping, or too many: inline
    else ++waiters_;
  }
  if (!offload) {
    int err = op();
    const uint64_t end = monotonic_ns();
    offload_.measured(kind, accel::Serve::Inline, end - start, static_cast<int64_t>(end));
    return r.reply_err(err);
  }
  std::shared_ptr<Offloaded> w(new Offloaded{*this, defer(r)});
  auto work = [w, op = std::move(op)]() mutable {
    if (!w) return;  // ran already (a copy of this function)
    efuse::name_this_thread("efuse-blocking");
    w->reply.reply_err(op());
    w.reset();  // done: shutdown() need not wait for whoever still holds this function
  };
  try {
    if (opts_.start_thread)
      opts_.start_thread(work);
    else
      std::thread(work).detach();
  } catch (const std::exception& e) {
    // No thread: serve it here after all.
    LOG_WARN("cannot start a thread for a blocking request (%s); serving it inline", e.what());
    work();
  }
  const uint64_t end = monotonic_ns();
  offload_.measured(kind, accel::Serve::Offload, end - start, static_cast<int64_t>(end));
}

}  // namespace fuse
