// Session: opens answered by efuse.ko's OPEN handler (kmod patch 0012, bpf/handlers/
// efuse_open.bpf.c). Such an open carries the module's fh (EFUSE_HANDLER_KERNEL_FH and the
// open's kernel handle number), never one of efused's, and its RELEASE ends in the module
// unless the file took a flock. The contract for the requests that still come up with it:
//
//   - any request but a flock's and RELEASE: served with the handle efused holds for the
//     node's kernel opens (hold_for_kernel_opens: a read-only open of its own, which also
//     keeps the node's passthrough backing id registered), taken at the first open answer
//     efused stores for the node, or at once for such an fh it never saw (a previous efused
//     stored the answer); both stay until the node is dropped (node_forgotten), when no file
//     of it can be open any more;
//   - a flock (SETLK, SETLKW with FUSE_LK_FLOCK): a handle of its own per module fh, as a
//     flock belongs to one open file description; the RELEASE that undoes it (the module
//     sends it up with FUSE_RELEASE_FLOCK_UNLOCK) releases that handle;
//   - RELEASE of a module fh without such a handle: answered 0, nothing held for it.
//
// Only on the kernel module tier with handlers (answers_ set): elsewhere no such open
// exists, and an fh with both bits is one efused never gave (EBADF from the backend).
#include <fcntl.h>

#include "fuse/kernel_answers.h"
#include "fuse/session.h"
#include "fuse/session_request.h"

namespace fuse {

namespace {

bool module_fh(uint64_t fh) { return (fh & EFUSE_HANDLER_KERNEL_FH) == EFUSE_HANDLER_KERNEL_FH; }

}  // namespace

bool Session::kernel_fh(uint64_t fh) const {
  return module_fh(fh) && answers_.load(std::memory_order_acquire) != nullptr;
}

// Before an open answer with `backing_id` is stored for `nodeid`: holds a read-only
// passthrough open of the node (the id stays registered while the kernel may still set up
// passthrough with it), and says whether the node's id is `backing_id`.
bool Session::hold_for_kernel_opens(const fs::Context& ctx, uint64_t nodeid,
                                    int32_t backing_id) {
  std::lock_guard lk(kernel_opens_mu_);
  auto held = kernel_opens_.find(nodeid);
  if (held != kernel_opens_.end() && !held->second.backed) {
    // Taken by own_fh() for a module fh of a previous efused: one that holds the id instead.
    (void)fs_.release(ctx, nodeid, held->second.fh);
    kernel_opens_.erase(held);
    kernel_open_holds_.fetch_sub(1, std::memory_order_relaxed);
    held = kernel_opens_.end();
  }
  if (held == kernel_opens_.end()) {
    if (kernel_opens_.size() >= kMaxOpenAnswers) return false;  // as many as answers
    auto o = fs_.open(ctx, nodeid, O_RDONLY);
    if (!o.ok()) return false;
    k::fuse_open_out out;
    fill_open_out(&out, *o, false, nodeid);
    if (!(out.open_flags & k::kFopenPassthrough)) {
      backing_released(o->fh);
      (void)fs_.release(ctx, nodeid, o->fh);
      return false;
    }
    kernel_opens_.emplace(nodeid, KernelOpenHold{o->fh, true, nodeid});
    kernel_open_holds_.fetch_add(1, std::memory_order_relaxed);
  }
  std::lock_guard b(backing_mu_);
  auto it = backing_.find(nodeid);
  return it != backing_.end() && it->second.id == backing_id;
}

// The handle efused serves a request of `nodeid` carrying `fh` with (see the top).
uint64_t Session::own_fh(const fs::Context& ctx, uint64_t nodeid, uint64_t fh) {
  if (!kernel_fh(fh)) return fh;
  std::lock_guard lk(kernel_opens_mu_);
  if (auto f = kernel_flocks_.find(fh); f != kernel_flocks_.end()) return f->second.fh;
  if (auto h = kernel_opens_.find(nodeid); h != kernel_opens_.end()) return h->second.fh;
  auto o = fs_.open(ctx, nodeid, O_RDONLY);
  if (!o.ok()) return fh;  // the backend answers EBADF, as for any handle it never gave
  kernel_opens_.emplace(nodeid, KernelOpenHold{o->fh, false, nodeid});
  kernel_open_holds_.fetch_add(1, std::memory_order_relaxed);
  return o->fh;
}

// The handle a flock through `fh` takes: for a module fh, one of its own until its RELEASE.
uint64_t Session::flock_fh(const fs::Context& ctx, uint64_t nodeid, uint64_t fh) {
  if (!kernel_fh(fh)) return fh;
  std::lock_guard lk(kernel_opens_mu_);
  if (auto f = kernel_flocks_.find(fh); f != kernel_flocks_.end()) return f->second.fh;
  auto o = fs_.open(ctx, nodeid, O_RDONLY);
  if (!o.ok()) return fh;
  kernel_flocks_.emplace(fh, KernelOpenHold{o->fh, false, nodeid});
  return o->fh;
}

// RELEASE of `fh`: the handle to release (for a module fh, its flock's, taken from the
// table), or nullopt for a module fh that holds nothing.
std::optional<uint64_t> Session::released_kernel_fh(uint64_t fh) {
  if (!kernel_fh(fh)) return fh;
  std::lock_guard lk(kernel_opens_mu_);
  auto f = kernel_flocks_.find(fh);
  if (f == kernel_flocks_.end()) return std::nullopt;
  uint64_t own = f->second.fh;
  kernel_flocks_.erase(f);
  return own;
}

// After a FORGET: once the node is gone, so is the handle held for its kernel opens, and
// with it (the answers went first, KernelAnswers::forgotten) perhaps the backing id.
void Session::node_forgotten(uint64_t nodeid) {
  KernelOpenHold hold;
  {
    std::lock_guard lk(kernel_opens_mu_);
    auto h = kernel_opens_.find(nodeid);
    if (h == kernel_opens_.end() || fs_.holds(nodeid)) return;
    hold = h->second;
    kernel_opens_.erase(h);
    kernel_open_holds_.fetch_sub(1, std::memory_order_relaxed);
  }
  if (hold.backed) backing_released(hold.fh);
  (void)fs_.release(fs::Context{}, nodeid, hold.fh);
}

// Session shutdown: every handle held for kernel opens (unless a restart hands the
// connection, and with it those opens, to the next efused).
void Session::release_kernel_opens() {
  if (keep_for_restart_) return;
  std::unordered_map<uint64_t, KernelOpenHold> holds;
  std::unordered_map<uint64_t, KernelOpenHold> flocks;
  {
    std::lock_guard lk(kernel_opens_mu_);
    holds.swap(kernel_opens_);
    flocks.swap(kernel_flocks_);
    kernel_open_holds_.store(0, std::memory_order_relaxed);
  }
  for (const auto& [nodeid, hold] : holds) {
    if (hold.backed) backing_released(hold.fh);
    (void)fs_.release(fs::Context{}, nodeid, hold.fh);
  }
  for (const auto& [kfh, hold] : flocks) (void)fs_.release(fs::Context{}, hold.nodeid, hold.fh);
}

}  // namespace fuse
