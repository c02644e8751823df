// Session: FUSE passthrough backing ids, one per inode with passthrough opens.
#include "fuse/session.h"

#include <chrono>
#include <cstring>

#include "common/log.h"
#include "fuse/session_request.h"

namespace fuse {

namespace {

uint64_t elapsed_ns(std::chrono::steady_clock::time_point since) {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now() - since)
                                   .count());
}

}  // namespace

void Session::fill_open_out(k::fuse_open_out* o, const fs::OpenInfo& info, bool dir,
                            uint64_t nodeid) {
  *o = {};
  o->fh = info.fh;
  if (info.direct_io) o->open_flags |= k::kFopenDirectIo;
  if (info.keep_cache) o->open_flags |= k::kFopenKeepCache;
  if (info.nonseekable) o->open_flags |= k::kFopenNonseekable;
  if (dir || info.passthrough_fd < 0 || !negotiated_.has(k::init::kPassthrough)) return;
  // The kernel wants one backing id per inode for all its passthrough opens (a second id
  // for the same inode fails the open with EIO). The id lives while the inode has opens.
  std::lock_guard lk(backing_mu_);
  Backing& b = backing_[nodeid];
  if (b.id <= 0) {
    const auto start = std::chrono::steady_clock::now();
    int id = conn_ != nullptr ? conn_->backing_open(info.passthrough_fd) : -ENOTCONN;
    const uint64_t took = elapsed_ns(start);
    if (id <= 0) {
      backing_.erase(nodeid);
      // The kernel refused (stacking depth, permissions, limits): serve this file's I/O.
      uint64_t n = passthrough_refusals_.fetch_add(1, std::memory_order_relaxed);
      fs_.passthrough_refused(nodeid);
      if (n == 0)
        LOG_WARN("kernel refused a passthrough backing file (%s); serving I/O in efused",
                 strerror(-id));
      return;
    }
    b.id = id;
    // What passthrough costs efused for this inode (io_path: auto weighs it, accel/io_path.h).
    fs_.passthrough_registered(nodeid, took);
    if (state_ != nullptr && (b.slot = state_->alloc()) != nullptr) {
      b.slot->v[0].store(nodeid, std::memory_order_relaxed);
      b.slot->v[1].store(static_cast<uint64_t>(id), std::memory_order_relaxed);
      efuse::SlotFile::publish(b.slot, efuse::SlotFile::kBacking);
    }
  }
  ++b.opens;
  if (b.slot != nullptr) b.slot->v[2].store(b.opens, std::memory_order_relaxed);
  backing_fh_[info.fh] = nodeid;
  if (state_ != nullptr) {
    if (efuse::SlotFile::Slot* fs = state_->alloc()) {
      fs->v[0].store(info.fh, std::memory_order_relaxed);
      fs->v[1].store(nodeid, std::memory_order_relaxed);
      efuse::SlotFile::publish(fs, efuse::SlotFile::kBackingFh);
      backing_fh_slots_[info.fh] = fs;
    }
  }
  // The kernel fails a passthrough open (EIO) that carries any flag outside
  // PASSTHROUGH | DIRECT_IO | PARALLEL_DIRECT_WRITES | NOFLUSH; page-cache flags such as
  // KEEP_CACHE mean nothing without a FUSE page cache anyway.
  o->open_flags &= k::kFopenNoflush | k::kFopenParallelDirectWrites;
  o->open_flags |= k::kFopenPassthrough;
  o->backing_id = b.id;
  passthrough_opens_.fetch_add(1, std::memory_order_relaxed);
}

// RELEASE of `fh`. The kernel holds its own reference to the backing file while the inode is
// open; the id only names it for new opens, so it goes with the inode's last passthrough open.
void Session::backing_released(uint64_t fh) {
  std::lock_guard lk(backing_mu_);
  auto it = backing_fh_.find(fh);
  if (it == backing_fh_.end()) return;
  auto b = backing_.find(it->second);
  if (b != backing_.end() && --b->second.opens == 0) {
    const auto start = std::chrono::steady_clock::now();
    conn_->backing_close(b->second.id);  // ids exist only with a connection
    // Also part of what passthrough cost efused for this inode (before fs_.release() ends
    // its epoch).
    fs_.passthrough_registered(it->second, elapsed_ns(start));
    if (state_ != nullptr) state_->free(b->second.slot);
    backing_.erase(b);
  } else if (b != backing_.end() && b->second.slot != nullptr) {
    b->second.slot->v[2].store(b->second.opens, std::memory_order_relaxed);
  }
  backing_fh_.erase(it);
  if (auto s = backing_fh_slots_.find(fh); s != backing_fh_slots_.end()) {
    state_->free(s->second);
    backing_fh_slots_.erase(s);
  }
}

// Shutdown: every id still registered.
void Session::close_backing_ids() {
  std::lock_guard lk(backing_mu_);
  // A restart hands them to the next efused: the kernel keeps them with the connection.
  if (keep_for_restart_) return;
  for (auto& [nodeid, b] : backing_) conn_->backing_close(b.id);
  backing_.clear();
  backing_fh_.clear();
}

}  // namespace fuse
