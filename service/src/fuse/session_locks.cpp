// Session: POSIX locks and flock, and the blocking waits that answer later
// (DeferredReply).
#include "fuse/session.h"

#include <fcntl.h>
#include <sys/file.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <thread>

#include "common/log.h"
#include "common/thread_name.h"
#include "fuse/kernel_answers.h"
#include "fuse/session_request.h"

namespace fuse {

static fs::Lock to_lock(const k::fuse_file_lock& l) {
  return fs::Lock{l.start, l.end, l.type, l.pid};
}

// Before any lock request is served: efused may now hold locks of the node that FLUSH must
// drop, so the module's FLUSH handler stops answering for it (KernelAnswers::lock_asked).
void Session::lock_asked(uint64_t nodeid) {
  if (KernelAnswers* a = answers_.load(std::memory_order_acquire)) a->lock_asked(nodeid);
}

void Session::do_getlk(Request& r) {
  TAKE(in, k::fuse_lk_in);
  lock_asked(r.hdr.nodeid);
  auto l = fs_.getlk(r.ctx, r.hdr.nodeid, own_fh(r.ctx, r.hdr.nodeid, in->fh), in->owner,
                     to_lock(in->lk));
  if (!l.ok()) return r.reply_err(l.error());
  k::fuse_lk_out o{};
  o.lk = {l->start, l->end, l->type, l->pid};
  r.reply(o);
}

static int flock_op(uint32_t type) {
  switch (type) {
    case F_RDLCK: return LOCK_SH;
    case F_WRLCK: return LOCK_EX;
    default: return LOCK_UN;
  }
}

// How long a conflicting LOCK_NB flock waits for the RELEASE of a holder that was closed
// (FLUSH) but not yet released. RELEASE is queued before close() returns, so normally it is
// served within microseconds; the wait runs out only when the holder's description is still
// open elsewhere (a dup, a forked child), and then costs the asker this once per close.
static constexpr auto kReleaseGrace = std::chrono::milliseconds(250);

// Every flock goes through here: the lock is tried without blocking and the session notes
// which handles hold one.
Status Session::try_flock(const fs::Context& ctx, uint64_t nodeid, uint64_t fh, uint32_t type) {
  int op = flock_op(type);
  Status s = fs_.flock(ctx, nodeid, fh, op | LOCK_NB);
  if (!s.ok()) return s;
  std::lock_guard lk(waits_mu_);
  if (op == LOCK_UN) {
    flock_holders_.erase({nodeid, fh});
  } else {
    flock_holders_[{nodeid, fh}] = false;  // locking through it: the description is open
  }
  flock_holder_count_.store(flock_holders_.size(), std::memory_order_relaxed);
  return s;
}

// FLUSH (released = false): one descriptor of the handle was closed, perhaps the last.
// RELEASE (released = true): the description is gone and with it its flock.
void Session::flock_closed(uint64_t nodeid, uint64_t fh, bool released) {
  if (flock_holder_count_.load(std::memory_order_relaxed) == 0) return;
  std::lock_guard lk(waits_mu_);
  auto it = flock_holders_.find({nodeid, fh});
  if (it == flock_holders_.end()) return;
  if (!released) {
    it->second = true;
    return;
  }
  flock_holders_.erase(it);
  flock_holder_count_.store(flock_holders_.size(), std::memory_order_relaxed);
  flock_releases_.fetch_add(1);
  waits_cv_.notify_all();
}

// The handles of one inode that hold a flock (waits_mu_ held).
std::ranges::subrange<Session::FlockHolders::iterator> Session::holders_of(uint64_t nodeid) {
  return {flock_holders_.lower_bound({nodeid, 0}),
          flock_holders_.upper_bound({nodeid, UINT64_MAX})};
}

// Whether another handle of the inode holds a flock and was closed since (waits_mu_ held).
bool Session::closing_holder(uint64_t nodeid, uint64_t fh) {
  for (const auto& [key, closed] : holders_of(nodeid))
    if (key.second != fh && closed) return true;
  return false;
}

static bool conflict(const Status& s) { return s.error() == EAGAIN || s.error() == EWOULDBLOCK; }

void Session::do_setlk(Request& r) {
  TAKE(in, k::fuse_lk_in);
  lock_asked(r.hdr.nodeid);
  if (!(in->lk_flags & k::kLkFlock)) {
    Status s = fs_.setlk(r.ctx, r.hdr.nodeid, own_fh(r.ctx, r.hdr.nodeid, in->fh), in->owner,
                         to_lock(in->lk));
    return r.reply_err(conflict(s) ? EAGAIN : s.error());
  }
  const uint64_t fh = flock_fh(r.ctx, r.hdr.nodeid, in->fh);
  uint64_t releases = flock_releases_.load();
  Status s = try_flock(r.ctx, r.hdr.nodeid, fh, in->lk.type);
  if (conflict(s)) {
    // The holder may be a description closed a moment ago whose RELEASE another worker has
    // not served yet; natively close() would have dropped the lock already.
    std::unique_lock lk(waits_mu_);
    if (flock_releases_.load() != releases || closing_holder(r.hdr.nodeid, fh)) {
      lk.unlock();
      return wait_for_lock(r, *in, Clock::now() + kReleaseGrace);
    }
    return r.reply_err(EAGAIN);
  }
  r.reply_err(s.error());
}

void Session::do_setlkw(Request& r) {
  TAKE(in, k::fuse_lk_in);
  lock_asked(r.hdr.nodeid);
  Status s = (in->lk_flags & k::kLkFlock)
                 ? try_flock(r.ctx, r.hdr.nodeid, flock_fh(r.ctx, r.hdr.nodeid, in->fh),
                             in->lk.type)
                 : fs_.setlk(r.ctx, r.hdr.nodeid, own_fh(r.ctx, r.hdr.nodeid, in->fh),
                             in->owner, to_lock(in->lk));
  if (!conflict(s)) return r.reply_err(s.error());
  wait_for_lock(r, *in, Clock::time_point::max());
}

// One blocking lock wait: its reply, and its place among the waits shutdown() waits for,
// which it leaves when it goes, answered or not (a wait dropped unanswered answers EIO).
struct Session::LockWait {
  Session& session;
  DeferredReply reply;
  ~LockWait() {
    uint64_t unique = reply.unique();
    { DeferredReply dropped = std::move(reply); }
    std::lock_guard lk(session.waits_mu_);
    session.waiting_.erase(unique);
    session.interrupted_.erase(unique);
    --session.waiters_;
    session.waits_cv_.notify_all();
  }
};

// Conflict: wait on a thread of its own so this worker keeps serving (the holder's unlock
// needs a free worker). The waiter holds the request's DeferredReply; INTERRUPT cancels it
// with EINTR. When no thread can start, the request is answered ENOLCK at once.
void Session::wait_for_lock(Request& r, const k::fuse_lk_in& in, Clock::time_point give_up) {
  {
    std::lock_guard lk(waits_mu_);
    if (stopping_ || waiters_ >= 1024) return r.reply_err(ENOLCK);
    waiting_.insert(r.hdr.unique);
    ++waiters_;
  }
  // std::function wants a copyable callable: the wait travels in a shared_ptr, and stays
  // here when the thread cannot start.
  std::shared_ptr<LockWait> w(new LockWait{*this, defer(r)});
  const bool is_flock = (in.lk_flags & k::kLkFlock) != 0;
  const uint64_t fh = is_flock ? flock_fh(r.ctx, r.hdr.nodeid, in.fh)
                               : own_fh(r.ctx, r.hdr.nodeid, in.fh);
  auto wait = [this, w, ctx = r.ctx, nodeid = r.hdr.nodeid, fh, owner = in.owner,
               lock = to_lock(in.lk), is_flock, give_up] {
    w->reply.reply_err(lock_waiter(ctx, nodeid, fh, owner, lock, is_flock, give_up));
  };
  try {
    if (opts_.start_thread)
      opts_.start_thread(std::move(wait));
    else
      std::thread(std::move(wait)).detach();
  } catch (const std::exception& e) {
    LOG_WARN("cannot start a lock waiter thread (%s); answering ENOLCK", e.what());
    w->reply.reply_err(ENOLCK);
  }
}

// Retries until the lock is granted, the request is interrupted (EINTR) or the session stops
// (EINTR); with a finite give_up (a LOCK_NB flock waiting for a RELEASE) also until no closed
// holder is left or give_up passes (EAGAIN). Returns the errno to answer.
int Session::lock_waiter(const fs::Context& ctx, uint64_t nodeid, uint64_t fh,
                          uint64_t owner, fs::Lock lock, bool is_flock, Clock::time_point give_up) {
  efuse::name_this_thread("efuse-lockwait");
  const bool bounded = give_up != Clock::time_point::max();
  auto delay = std::chrono::milliseconds(1);
  int err = 0;
  for (;;) {
    uint64_t releases = flock_releases_.load();
    Status s = is_flock ? try_flock(ctx, nodeid, fh, lock.type)
                        : fs_.setlk(ctx, nodeid, fh, owner, lock);
    if (!conflict(s)) {
      err = s.error();
      break;
    }
    std::unique_lock lk(waits_mu_);
    if (flock_releases_.load() != releases) continue;  // a holder went meanwhile: try again
    if (bounded && (!closing_holder(nodeid, fh) || Clock::now() >= give_up)) {
      // Still held: what stays of a closed holder is open elsewhere (a dup, a forked child).
      // Forget its close so the next asker does not wait for it again.
      for (auto& [key, closed] : holders_of(nodeid))
        if (key.second != fh) closed = false;
      err = EAGAIN;
      break;
    }
    auto until = std::min(Clock::now() + delay, give_up);
    if (waits_cv_.wait_until(lk, until, [&] {
          return stopping_ || interrupted_.count(ctx.unique) || flock_releases_ != releases;
        }) &&
        (stopping_ || interrupted_.count(ctx.unique))) {
      err = EINTR;
      break;
    }
    delay = std::min(delay * 2, std::chrono::milliseconds(50));
  }
  return err;
}

}  // namespace fuse
