// Passthrough backend: the restart state. The inode table records the nodeids the kernel
// holds (InodeTable::record); this records the file handles (fh) it holds: one
// SlotFile::kOpen slot per open, written after the open and freed at its RELEASE.
//
// A resumed efused reopens each handle's backing file by file handle with the open's flags
// (less O_TRUNC, O_CREAT, O_EXCL) and serves the handle through that descriptor under the
// fh the kernel knows (fd_of). What a restart does not carry over: POSIX and flock locks
// taken through the mount (held on the old process's descriptors), and opens of files
// removed meanwhile (ESTALE: their handle then answers EBADF, RELEASE still succeeds).
#include <fcntl.h>
#include <unistd.h>

#include <cstring>

#include "common/log.h"
#include "fs/passthrough/passthrough_fs.h"
#include "fs/passthrough/proc_path.h"

namespace efuse::fs::passthrough {

bool PassthroughFs::record_state(SlotFile* file) {
  if (!inodes_.record(file)) return false;
  std::unique_lock lk(state_mu_);
  state_.store(file);
  return true;
}

void PassthroughFs::record_open(uint64_t fh, uint64_t nodeid, int flags, bool cached) {
  SlotFile* file = state_.load(std::memory_order_relaxed);
  SlotFile::Slot* s = file->alloc();
  if (s == nullptr) return;  // the file is full: incomplete() keeps it from being resumed
  s->v[0].store(fh, std::memory_order_relaxed);
  s->v[1].store(nodeid, std::memory_order_relaxed);
  s->v[2].store(static_cast<uint32_t>(flags), std::memory_order_relaxed);
  s->v[3].store(cached ? 1 : 0, std::memory_order_relaxed);
  SlotFile::publish(s, SlotFile::kOpen);
  std::unique_lock lk(state_mu_);
  open_slots_[fh] = s;
}

bool PassthroughFs::forget_open(uint64_t fh) {
  std::unique_lock lk(state_mu_);
  if (auto it = open_slots_.find(fh); it != open_slots_.end()) {
    state_.load()->free(it->second);
    open_slots_.erase(it);
  }
  auto it = restored_fds_.find(fh);
  if (it == restored_fds_.end()) return false;
  if (it->second >= 0) ::close(it->second);
  restored_fds_.erase(it);
  return true;
}

void PassthroughFs::avoid_restored(OpenInfo& info) {
  std::vector<int> spare;
  {
    std::shared_lock lk(state_mu_);
    while (!is_shared(info.fh) && restored_fds_.count(info.fh) != 0) {
      int fd = passthrough::fd_of(info.fh);
      int moved = fcntl(fd, F_DUPFD_CLOEXEC, 0);
      if (moved < 0) break;  // out of descriptors: the open fails below instead
      spare.push_back(fd);
      info.fh = (info.fh & ~uint64_t{0xffffffffu}) | static_cast<uint32_t>(moved);
      if (info.passthrough_fd == fd) info.passthrough_fd = moved;
    }
  }
  for (int fd : spare) ::close(fd);
}

Status PassthroughFs::restore_state(SlotFile* file, std::string* why) {
  Status s = inodes_.restore(file, why);
  if (!s.ok()) return s;
  struct Open {
    uint64_t fh, nodeid;
    int flags;
    bool cached;
    SlotFile::Slot* slot;
  };
  std::vector<Open> opens;
  std::string problem;
  file->for_each(SlotFile::kOpen, [&](SlotFile::Slot& sl) {
    Open o{sl.v[0].load(), sl.v[1].load(), static_cast<int>(sl.v[2].load()),
           (sl.v[3].load() & 1) != 0, &sl};
    if (!inodes_.get(o.nodeid) && problem.empty())
      problem = "open handle " + std::to_string(o.fh) + " names nodeid " +
                std::to_string(o.nodeid) + ", which the state does not hold";
    opens.push_back(o);
  });
  if (!problem.empty()) {
    *why = problem;
    return Errno{EINVAL};
  }
  size_t lost = 0;
  uint64_t max_serial = 0;
  std::unique_lock lk(state_mu_);
  for (const Open& o : opens) {
    auto inode = inodes_.get(o.nodeid);
    int fd = -1;
    PathFd path = inode->pin();
    if (path.ok()) {
      int flags = is_shared(o.fh) ? O_RDONLY | O_CLOEXEC
                                  : backing_open_flags(o.flags & ~(O_TRUNC | O_CREAT | O_EXCL),
                                                       caps_.writeback_cache);
      fd = ::open(ProcPath(path), flags);
    }
    if (fd < 0) ++lost;
    if (is_shared(o.fh)) max_serial = std::max(max_serial, (o.fh >> 32) & 0x3fffffffu);
    restored_fds_[o.fh] = fd;
    open_slots_[o.fh] = o.slot;
    handles_.add(o.fh);
    inode->opens.fetch_add(1);
    if (is_writer(o.fh)) inode->writers.fetch_add(1);
    std::lock_guard io(inode->io_mu);
    if (inode->io_opens++ == 0) inode->io_cached = o.cached;
    if (o.cached) inode->paged.store(true, std::memory_order_relaxed);
  }
  shared_serial_.store(max_serial + 1);
  state_.store(file);
  has_restored_.store(true, std::memory_order_release);
  LOG_INFO("%s: resumed %zu inodes and %zu open files from the restart state%s", source_.c_str(),
           inodes_.size() - 1, opens.size(),
           lost == 0 ? ""
                     : (" (" + std::to_string(lost) +
                        " could not be reopened, removed meanwhile: their I/O fails with EBADF)")
                           .c_str());
  return {};
}

}  // namespace efuse::fs::passthrough
