#include "fs/passthrough/watcher.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/log.h"
#include "common/thread_name.h"
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
  // Attribute and data events, merged per file until the batch is read to its end: a
  // busy writer queues one event per write, so the lookup must not allocate.
  struct NameHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using Names = std::unordered_map<std::string, uint32_t, NameHash, std::equal_to<>>;
  std::unordered_map<uint64_t, Names> children;  // directory -> name -> event mask
  std::unordered_map<uint64_t, uint32_t> selves;  // a watched directory itself -> event mask
  // A name was removed or replaced: some file may have lost one of several links.
  bool unlinked = false;

  void child(uint64_t dir, std::string_view name, uint32_t mask) {
    auto& names = children[dir];
    if (auto it = names.find(name); it != names.end())
      it->second |= mask;
    else
      names.emplace(name, mask);
  }
};

Watcher::Watcher(InodeTable& table, Invalidator& inv, Counters& counters,
                 const std::string& label)
    : table_(table), inv_(inv), counters_(counters), label_(label) {
  fd_ = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  stop_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd_ < 0 || stop_fd_ < 0) {
    LOG_WARN("%s: cannot watch the backing tree (%s; see fs.inotify.max_user_instances); "
             "changes made behind efused's back show only when cache timeouts expire, which "
             "are capped at 1 s for this mount",
             label_.c_str(), strerror(errno));
    // Counted as a failed watch: PassthroughFs caps its timeouts unless exact().
    failed();
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

void Watcher::failed() {
  watch_failures_.fetch_add(1);
  counters_.failures.fetch_add(1, std::memory_order_relaxed);
}

size_t Watcher::watched() const {
  std::lock_guard lk(mu_);
  return dirs_.size();
}

void Watcher::watch(Inode& dir) {
  if (fd_ < 0 || dir.watch.load() >= 0) return;
  PathFd fd = dir.pin();
  if (!fd.ok()) return;  // removed meanwhile: nothing left to watch
  int wd = inotify_add_watch(fd_, ProcPath(fd), kDirMask);
  if (wd < 0) {
    if (watch_failures_.load() == 0)
      LOG_WARN("%s: inotify_add_watch failed (%s; see fs.inotify.max_user_watches); outside "
               "changes under that directory show when cache timeouts expire, which are "
               "capped at 1 s for this mount from now on",
               label_.c_str(), strerror(errno));
    failed();
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

bool Watcher::consume_entry(uint64_t dir, std::string_view name) {
  std::lock_guard lk(mu_);
  auto it = self_entries_.find({dir, std::string(name)});
  if (it == self_entries_.end()) return false;
  if (--it->second.first == 0) self_entries_.erase(it);
  return true;
}

// Notes whose events never came (an operation that failed, or made no change) must not
// hide a later outside change for long.
// Scans the notes with the lock held that every entry change of ours takes: at most once a
// second, not after every batch of events.
void Watcher::expire_notes() {
  auto now = Clock::now();
  if (now - last_expiry_ < kExpiryInterval) return;
  last_expiry_ = now;
  auto cutoff = now - kNoteLifetime;
  std::lock_guard lk(mu_);
  std::erase_if(self_entries_, [&](const auto& kv) { return kv.second.second < cutoff; });
}

// The event queue overflowed: we no longer know what changed. Drop the kernel's cached
// attributes, data and directory contents of everything it knows.
void Watcher::resync(Batch& batch) {
  counters_.overflows.fetch_add(1, std::memory_order_relaxed);
  if (overflows_seen_++ == 0)
    LOG_WARN("%s: inotify queue overflowed; invalidating every cached inode", label_.c_str());
  for (const auto& inode : table_.all()) {
    inode->entries_changed();  // listings in progress may have missed anything
    inode->kernel_attrs.store(0);
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
    if (ev.mask & (IN_ATTRIB | IN_MODIFY)) batch.selves[dir] |= ev.mask;
    return;
  }
  std::string_view name(ev.name);
  if (ev.mask & (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)) {
    if (consume_entry(dir, name)) return;
    // Listings in progress may have missed it, and a complete cached listing does: it is
    // dropped when the kernel next gets the directory's attributes, which the invalidation
    // below makes it ask for before it lists again (passthrough_dir.cpp). Dropping its pages
    // here could hit a listing half way into the cache, which the kernel then never
    // completes.
    if (auto parent = table_.get(dir)) {
      parent->entries_changed();
      parent->listing_stale.store(true);
      parent->kernel_attrs.store(0);
    }
    batch.entries.insert({dir, std::string(name)});
    batch.attrs.insert(dir);  // the directory's size and times changed
    // A file that got this name (a new hard link, a rename) has a new ctime and maybe a new
    // link count; one that lost it may live on under another name with one link less.
    if (ev.mask & (IN_CREATE | IN_MOVED_TO)) batch.child(dir, name, IN_ATTRIB);
    if (ev.mask & (IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)) batch.unlinked = true;
    return;
  }
  batch.child(dir, name, ev.mask);  // IN_ATTRIB / IN_MODIFY of a child
}

// An attribute or data event of `inode`, whose attributes are now `st`.
void Watcher::check(Inode& inode, const struct stat& st, uint32_t mask, Batch& batch) {
  // Open files keep their pages: writes through the mount (served or passthrough) land
  // here too. Closed files lose theirs whatever the attributes say, if the kernel may hold
  // any: files only ever opened with passthrough have none (the kernel reads and maps the
  // backing file), so a write through such an open that is seen after the close costs
  // nothing once its attributes went back to the kernel.
  bool data = (mask & IN_MODIFY) && inode.paged.load() && inode.opens.load() == 0;
  uint64_t held = inode.kernel_attrs.load();
  if (!data && (held == 0 || held == attr_digest(st))) return;
  inode.kernel_attrs.store(0);
  (data ? batch.data : batch.attrs).insert(inode.nodeid);
}

// Looks once at every file the batch's attribute and data events named.
void Watcher::resolve(Batch& batch) {
  struct stat st;
  for (const auto& [dir, names] : batch.children) {
    auto parent = table_.get(dir);
    if (!parent) continue;
    PathFd parent_fd = parent->pin();
    if (!parent_fd.ok()) continue;
    for (const auto& [name, mask] : names) {
      if (fstatat(parent_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
        continue;  // gone already: its removal has an event of its own
      // The inode the kernel knows under that name, if any.
      if (auto child = table_.find(st.st_dev, st.st_ino)) check(*child, st, mask, batch);
    }
  }
  auto check_self = [&](Inode& inode, uint32_t mask) {
    PathFd fd = inode.pin();  // ESTALE when the object is gone altogether
    if (fd.ok() && fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0)
      check(inode, st, mask, batch);
  };
  for (const auto& [nodeid, mask] : batch.selves)
    if (auto dir = table_.get(nodeid)) check_self(*dir, mask);
  if (batch.unlinked)
    for (const auto& inode : table_.linked()) check_self(*inode, IN_ATTRIB);
}

void Watcher::run() {
  efuse::name_this_thread("efuse-watch");
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
    uint64_t events = 0;
    for (;;) {
      ssize_t n = ::read(fd_, buf.data(), buf.size());
      if (n <= 0) break;
      for (ssize_t off = 0; off < n; ++events) {
        const auto* ev = reinterpret_cast<const struct inotify_event*>(buf.data() + off);
        handle(*ev, batch);
        off += static_cast<ssize_t>(sizeof(struct inotify_event) + ev->len);
      }
    }
    resolve(batch);
    for (const auto& [dir, name] : batch.entries) inv_.inval_entry(dir, name);
    for (uint64_t ino : batch.data) inv_.inval_inode(ino, true);
    uint64_t sent = batch.entries.size() + batch.data.size();
    for (uint64_t ino : batch.attrs)
      if (!batch.data.count(ino)) {
        inv_.inval_inode(ino, false);
        ++sent;
      }
    counters_.events.fetch_add(events, std::memory_order_relaxed);
    counters_.invalidations.fetch_add(sent, std::memory_order_relaxed);
  }
}

}  // namespace efuse::fs::passthrough
