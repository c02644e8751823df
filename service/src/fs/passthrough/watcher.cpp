#include "fs/passthrough/watcher.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <vector>

#include "common/log.h"
#include "fs/passthrough/proc_path.h"

namespace efuse::fs::passthrough {

namespace {
constexpr uint32_t kDirMask = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB |
                              IN_MODIFY | IN_ONLYDIR | IN_EXCL_UNLINK;
constexpr auto kBatchWindow = std::chrono::milliseconds(10);
constexpr auto kNoteLifetime = std::chrono::seconds(5);
constexpr auto kExpiryInterval = std::chrono::seconds(1);
}  // namespace

struct Watcher::Batch {
  std::set<std::pair<uint64_t, std::string>> entries;
  std::set<uint64_t> data;   // attributes and data (and a directory's readdir cache)
  std::set<uint64_t> attrs;  // attributes only
};

Watcher::Watcher(InodeTable& table, Invalidator& inv, const std::string& label)
    : table_(table), inv_(inv), label_(label) {
  fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd_ < 0 || stop_fd_ < 0) {
    LOG_WARN("%s: cannot watch the backing tree (%s; see fs.inotify.max_user_instances); "
             "changes made behind efused's back show only when cache timeouts expire, which "
             "are capped at 1 s for this mount",
             label_.c_str(), strerror(errno));
    // Counted as a failed watch: PassthroughFs caps its timeouts on watch_failures().
    watch_failures_.store(1);
    return;
  }
  thread_ = std::thread(&Watcher::run, this);
}

Watcher::~Watcher() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    ssize_t ignored = ::write(stop_fd_, &one, sizeof one);
    (void)ignored;
    thread_.join();
  }
  if (fd_ >= 0) ::close(fd_);
  if (stop_fd_ >= 0) ::close(stop_fd_);
}

void Watcher::watch(Inode& dir) {
  if (fd_ < 0 || dir.watch.load() >= 0) return;
  PathFd fd = dir.pin();
  if (!fd.ok()) return;  // removed meanwhile: nothing left to watch
  int wd = inotify_add_watch(fd_, ProcPath(fd), kDirMask);
  if (wd < 0) {
    if (watch_failures_.fetch_add(1) == 0)
      LOG_WARN("%s: inotify_add_watch failed (%s; see fs.inotify.max_user_watches); outside "
               "changes under that directory show when cache timeouts expire, which are "
               "capped at 1 s for this mount from now on",
               label_.c_str(), strerror(errno));
    return;
  }
  dir.watch.store(wd);
  std::lock_guard lk(mu_);
  dirs_[wd] = dir.nodeid;
}

void Watcher::unwatch(Inode& dir) {
  int wd = dir.watch.exchange(-1);
  if (wd < 0 || fd_ < 0) return;
  inotify_rm_watch(fd_, wd);
  std::lock_guard lk(mu_);
  dirs_.erase(wd);
}

void Watcher::note_entry(uint64_t dir, std::string_view name, int events) {
  if (fd_ < 0) return;
  std::lock_guard lk(mu_);
  auto& n = self_entries_[{dir, std::string(name)}];
  n.first += events;
  n.second = Clock::now();
}

void Watcher::note_inode(const Inode& inode) {
  if (fd_ < 0) return;
  std::lock_guard lk(mu_);
  self_inodes_[inode.nodeid] = Clock::now();
}

bool Watcher::consume_entry(uint64_t dir, std::string_view name) {
  std::lock_guard lk(mu_);
  auto it = self_entries_.find({dir, std::string(name)});
  if (it == self_entries_.end()) return false;
  if (--it->second.first == 0) self_entries_.erase(it);
  return true;
}

// One event answers every change noted so far: inotify merges identical events still
// queued (tar's chown, chmod and utimes of one file arrive as one IN_ATTRIB), so counting
// would leave notes behind that swallow a later outside change. Changes of ours whose
// events were not merged cost a spurious attribute invalidation, never a stale cache.
bool Watcher::consume_inode(uint64_t nodeid) {
  std::lock_guard lk(mu_);
  return self_inodes_.erase(nodeid) != 0;
}

// Notes whose events never came (an operation that failed, or made no change) must not
// hide a later outside change for long.
// Scans both maps with the lock held that every request noting a change takes: at most
// once a second, not after every batch of events.
void Watcher::expire_notes() {
  auto now = Clock::now();
  if (now - last_expiry_ < kExpiryInterval) return;
  last_expiry_ = now;
  auto cutoff = now - kNoteLifetime;
  std::lock_guard lk(mu_);
  std::erase_if(self_entries_, [&](const auto& kv) { return kv.second.second < cutoff; });
  std::erase_if(self_inodes_, [&](const auto& kv) { return kv.second < cutoff; });
}

// The event queue overflowed: we no longer know what changed. Drop the kernel's cached
// attributes, data and directory contents of everything it knows.
void Watcher::resync(Batch& batch) {
  if (overflows_.fetch_add(1) == 0)
    LOG_WARN("%s: inotify queue overflowed; invalidating every cached inode", label_.c_str());
  for (const auto& inode : table_.all()) {
    inode->entries_changed();  // listings in progress may have missed anything
    batch.data.insert(inode->nodeid);
  }
}

void Watcher::handle(const struct inotify_event& ev, Batch& batch) {
  if (ev.mask & IN_Q_OVERFLOW) return resync(batch);
  uint64_t dir = 0;
  {
    std::lock_guard lk(mu_);
    auto it = dirs_.find(ev.wd);
    if (it == dirs_.end()) return;
    dir = it->second;
    if (ev.mask & IN_IGNORED) {
      dirs_.erase(it);
      return;
    }
  }
  if (ev.len == 0 || ev.name[0] == '\0') {  // the directory itself
    if (ev.mask & (IN_ATTRIB | IN_MODIFY)) batch.attrs.insert(dir);
    return;
  }
  std::string_view name(ev.name);
  if (ev.mask & (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)) {
    if (consume_entry(dir, name)) return;
    // Listings in progress may have missed it (see passthrough_dir.cpp); a cached listing
    // goes with the directory's pages below.
    if (auto parent = table_.get(dir)) parent->entries_changed();
    batch.entries.insert({dir, std::string(name)});
    batch.data.insert(dir);  // the directory's size, times and listing changed
    return;
  }
  // IN_ATTRIB / IN_MODIFY of a child: find the inode the kernel knows under that name.
  auto parent = table_.get(dir);
  if (!parent) return;
  struct stat st;
  PathFd parent_fd = parent->pin();
  if (!parent_fd.ok() || fstatat(parent_fd, ev.name, &st, AT_SYMLINK_NOFOLLOW) != 0) return;
  auto child = table_.find(st.st_dev, st.st_ino);
  if (!child || consume_inode(child->nodeid)) return;
  // Open files keep their pages: writes through the mount (served or passthrough) land
  // here too, and only need the size and times refreshed.
  if ((ev.mask & IN_MODIFY) && child->opens.load() == 0)
    batch.data.insert(child->nodeid);
  else
    batch.attrs.insert(child->nodeid);
}

void Watcher::run() {
  std::vector<char> buf(64 * 1024);
  struct pollfd fds[2] = {{fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, 1000) < 0 && errno != EINTR) break;
    if (fds[1].revents & POLLIN) break;
    expire_notes();
    if (!(fds[0].revents & POLLIN)) continue;
    // Let a burst of changes gather (the kernel merges repeated events meanwhile).
    std::this_thread::sleep_for(kBatchWindow);
    Batch batch;
    for (;;) {
      ssize_t n = ::read(fd_, buf.data(), buf.size());
      if (n <= 0) break;
      for (ssize_t off = 0; off < n;) {
        const auto* ev = reinterpret_cast<const struct inotify_event*>(buf.data() + off);
        handle(*ev, batch);
        off += static_cast<ssize_t>(sizeof(struct inotify_event) + ev->len);
      }
    }
    for (const auto& [dir, name] : batch.entries) inv_.inval_entry(dir, name);
    for (uint64_t ino : batch.data) inv_.inval_inode(ino, true);
    for (uint64_t ino : batch.attrs)
      if (!batch.data.count(ino)) inv_.inval_inode(ino, false);
    invalidations_.fetch_add(batch.entries.size() + batch.data.size() + batch.attrs.size(),
                             std::memory_order_relaxed);
  }
}

}  // namespace efuse::fs::passthrough
