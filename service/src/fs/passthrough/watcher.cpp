#include "fs/passthrough/watcher.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/statfs.h>
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
constexpr uint64_t kFanMask = FAN_MODIFY | FAN_EVENT_ON_CHILD;
// fanotify reports its events with inotify's bit values; the handling is shared.
static_assert(FAN_MODIFY == IN_MODIFY && FAN_Q_OVERFLOW == IN_Q_OVERFLOW);
constexpr auto kBatchWindow = std::chrono::milliseconds(10);
constexpr auto kNoteLifetime = std::chrono::seconds(5);
// Stale notes are dropped, and muted files compared with the kernel's view, this often.
constexpr auto kTickInterval = std::chrono::seconds(1);

#ifndef AT_HANDLE_FID
#define AT_HANDLE_FID 0x200  // Linux 6.5: a handle to identify, as fanotify reports it
#endif

// How fanotify names a directory in its events: the file system's id and the directory's
// file handle (type and bytes).
std::string fid_key(const void* fsid, const struct file_handle& fh) {
  std::string key(static_cast<const char*>(fsid), sizeof(fsid_t));
  key.append(reinterpret_cast<const char*>(&fh.handle_type), sizeof fh.handle_type);
  key.append(reinterpret_cast<const char*>(fh.f_handle), fh.handle_bytes);
  return key;
}

// The same key for a directory we hold; false if its file system gives no file ids.
bool fid_key_of(int fd, std::string& key) {
  struct statfs sfs;
  if (fstatfs(fd, &sfs) != 0) return false;
  auto handle = handle_of(fd, AT_HANDLE_FID);
  if (handle.empty() && errno == EINVAL) handle = handle_of(fd);  // AT_HANDLE_FID: 6.5
  if (handle.empty()) return false;
  key = fid_key(&sfs.f_fsid, *reinterpret_cast<const struct file_handle*>(handle.data()));
  return true;
}

// Adds (op FAN_MARK_ADD) or removes (FAN_MARK_REMOVE) the ignore mark that mutes the write
// events of fd's file. FAN_MARK_IGNORE is Linux 6.0; before it, the ignored mask of an
// inode mark does the same.
int ignore_mark(int fan_fd, unsigned op, int fd) {
  int rc = fanotify_mark(fan_fd, op | FAN_MARK_IGNORE_SURV, FAN_MODIFY, AT_FDCWD, ProcPath(fd));
  if (rc != 0 && errno == EINVAL)
    rc = fanotify_mark(fan_fd, op | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY,
                       FAN_MODIFY, AT_FDCWD, ProcPath(fd));
  return rc;
}
}  // namespace

struct Watcher::Batch {
  std::set<std::pair<uint64_t, std::string>> entries;
  // Of those, the names an event other than IN_CREATE was about (gone, renamed): dropped
  // from the kernel's cache. The others only appeared: expired (Invalidator::inval_entry).
  std::set<std::pair<uint64_t, std::string>> not_only_created;
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
  // Files to look at by inode (muted ones, once a tick and when unmuted), with the events
  // to take them for.
  std::vector<std::pair<uint64_t, uint32_t>> recheck;
  uint64_t events = 0;  // events read

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
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd_ < 0 || wake_fd_ < 0) {
    LOG_WARN("%s: cannot watch the backing tree (%s; see fs.inotify.max_user_instances); "
             "changes made behind efused's back show only when cache timeouts expire, which "
             "are capped at 1 s for this mount",
             label_.c_str(), strerror(errno));
    // Counted as a failed watch: PassthroughFs caps its timeouts unless exact().
    failed();
    return;
  }
  // Without it (no CAP_SYS_ADMIN before Linux 5.13, no FAN_REPORT_DFID_NAME before 5.9,
  // fs.fanotify.max_user_groups) writes come through inotify as everything else does.
  fan_fd_ = fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_DFID_NAME | FAN_NONBLOCK | FAN_CLOEXEC,
                          O_RDONLY);
  if (fan_fd_ < 0)
    LOG_INFO("%s: fanotify unavailable (%s): writes are watched with inotify, which costs "
             "every write to a watched directory an event",
             label_.c_str(), strerror(errno));
  thread_ = std::thread(&Watcher::run, this);
}

Watcher::~Watcher() {
  stop();
  // Closing the fanotify group drops its marks, ignore marks included.
  for (const auto& [nodeid, file] : muted_) file->muted.store(false);
  for (int fd : {fd_, fan_fd_, wake_fd_})
    if (fd >= 0) ::close(fd);
}

void Watcher::stop() {
  if (!thread_.joinable()) return;
  stopping_.store(true);
  wake();
  thread_.join();
}

void Watcher::wake() {
  uint64_t one = 1;
  ssize_t ignored = ::write(wake_fd_, &one, sizeof one);
  (void)ignored;
}

void Watcher::failed() {
  watch_failures_.fetch_add(1);
  counters_.failures.fetch_add(1, std::memory_order_relaxed);
}

size_t Watcher::watched() const {
  std::lock_guard lk(mu_);
  return dirs_.size();
}

size_t Watcher::watched_by_fanotify() const {
  std::lock_guard lk(mu_);
  return fid_of_.size();
}

size_t Watcher::muted() const {
  std::lock_guard lk(mu_);
  return muted_.size();
}

// Has fanotify report the writes to `dir`'s files. False where it cannot: a file system
// without file ids or with a zero fsid (FUSE, for one), fs.fanotify.max_user_marks.
bool Watcher::mark(Inode& dir, const PathFd& fd) {
  if (fan_fd_ < 0) return false;
  std::string key;
  if (fid_key_of(fd, key)) {
    if (fanotify_mark(fan_fd_, FAN_MARK_ADD | FAN_MARK_ONLYDIR, kFanMask, AT_FDCWD,
                      ProcPath(fd)) == 0) {
      std::lock_guard lk(mu_);
      fids_[key] = dir.nodeid;
      fid_of_[dir.nodeid] = std::move(key);
      return true;
    }
  }
  int err = errno;  // from name_to_handle_at, fstatfs or fanotify_mark
  std::lock_guard lk(mu_);
  if (!fan_refused_logged_) {
    fan_refused_logged_ = true;
    LOG_INFO("%s: fanotify cannot mark a backing directory (%s): writes to its files are "
             "watched with inotify (efuse_watch_fanotify_directories)",
             label_.c_str(), strerror(err));
  }
  return false;
}

void Watcher::watch(Inode& dir) {
  if (fd_ < 0 || dir.watch.load() >= 0) return;
  PathFd fd = dir.pin();
  if (!fd.ok()) return;  // removed meanwhile: nothing left to watch
  uint32_t mask = mark(dir, fd) ? kDirMask & ~IN_MODIFY : kDirMask;
  int wd = inotify_add_watch(fd_, ProcPath(fd), mask);
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
  bool marked;
  {
    std::lock_guard lk(mu_);
    dirs_.erase(wd);
    auto it = fid_of_.find(dir.nodeid);
    marked = it != fid_of_.end();
    if (marked) {
      fids_.erase(it->second);
      fid_of_.erase(it);
    }
  }
  // A directory gone altogether took its mark with it.
  if (marked)
    if (PathFd fd = dir.pin(); fd.ok())
      fanotify_mark(fan_fd_, FAN_MARK_REMOVE | FAN_MARK_ONLYDIR, kFanMask, AT_FDCWD,
                    ProcPath(fd));
}

// Event thread. `file` is open for writing through the mount and was written.
void Watcher::mute(const std::shared_ptr<Inode>& file) {
  PathFd fd = file->pin();
  if (!fd.ok() || ignore_mark(fan_fd_, FAN_MARK_ADD, fd) != 0) return;
  {
    // Held until unmuted: the mark is on the backing inode and must go even if the kernel
    // forgets the file right after its close.
    std::lock_guard lk(mu_);
    muted_.emplace(file->nodeid, file);
  }
  file->muted.store(true);
  // Its last writer may have closed before the flag was up, and so not told us.
  if (file->writers.load() == 0) closed(*file);
}

void Watcher::closed(Inode& file) {
  {
    std::lock_guard lk(mu_);
    if (!muted_.count(file.nodeid)) return;
    closed_.push_back(file.nodeid);
  }
  wake();
}

// Event thread: a muted file's last writable open closed.
void Watcher::unmute(uint64_t nodeid, Batch& batch) {
  std::shared_ptr<Inode> file;
  {
    std::lock_guard lk(mu_);
    auto it = muted_.find(nodeid);
    if (it == muted_.end()) return;
    file = std::move(it->second);
    muted_.erase(it);
  }
  file->muted.store(false);
  // Reopened for writing meanwhile: it is muted again at its next write event.
  if (PathFd fd = file->pin(); fd.ok()) (void)ignore_mark(fan_fd_, FAN_MARK_REMOVE, fd);
  batch.recheck.emplace_back(nodeid, IN_MODIFY);  // what its muted events would have said
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
// Scans the notes with the lock held that every entry change of ours takes: once a tick,
// not after every batch of events.
void Watcher::expire_notes() {
  auto cutoff = Clock::now() - kNoteLifetime;
  std::lock_guard lk(mu_);
  std::erase_if(self_entries_, [&](const auto& kv) { return kv.second.second < cutoff; });
}

// The event queue overflowed: we no longer know what changed. Drop the kernel's cached
// attributes, data and directory contents of everything it knows.
void Watcher::resync(Batch& batch) {
  counters_.overflows.fetch_add(1, std::memory_order_relaxed);
  if (overflows_seen_++ == 0)
    LOG_WARN("%s: event queue overflowed; invalidating every cached inode", label_.c_str());
  for (const auto& inode : table_.all()) {
    inode->entries_changed();  // listings in progress may have missed anything
    inode->kernel_attrs.store(0);
    batch.data.insert(inode->nodeid);
  }
}

// One event: `dir` is the watched directory, `name` the entry it is about (empty: the
// directory itself).
void Watcher::handle(uint64_t dir, std::string_view name, uint32_t mask, Batch& batch) {
  if (name.empty()) {
    if (mask & (IN_ATTRIB | IN_MODIFY)) batch.selves[dir] |= mask;
    return;
  }
  if (mask & (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)) {
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
    if (mask & (IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO))
      batch.not_only_created.insert({dir, std::string(name)});
    batch.attrs.insert(dir);  // the directory's size and times changed
    // A file that got this name (a new hard link, a rename) has a new ctime and maybe a new
    // link count; one that lost it may live on under another name with one link less.
    if (mask & (IN_CREATE | IN_MOVED_TO)) batch.child(dir, name, IN_ATTRIB);
    if (mask & (IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO)) batch.unlinked = true;
    return;
  }
  batch.child(dir, name, mask);  // IN_ATTRIB / IN_MODIFY of a child
}

void Watcher::read_inotify(Batch& batch) {
  alignas(struct inotify_event) char buf[64 * 1024];
  for (;;) {
    ssize_t n = ::read(fd_, buf, sizeof buf);
    if (n <= 0) return;
    for (ssize_t off = 0; off < n;) {
      const auto* ev = reinterpret_cast<const struct inotify_event*>(buf + off);
      off += static_cast<ssize_t>(sizeof(struct inotify_event) + ev->len);
      ++batch.events;
      if (ev->mask & IN_Q_OVERFLOW) {
        resync(batch);
        continue;
      }
      uint64_t dir = 0;
      {
        std::lock_guard lk(mu_);
        auto it = dirs_.find(ev->wd);
        if (it == dirs_.end()) continue;
        dir = it->second;
        if (ev->mask & IN_IGNORED) {
          dirs_.erase(it);
          continue;
        }
      }
      handle(dir, ev->len ? std::string_view(ev->name) : std::string_view(), ev->mask, batch);
    }
  }
}

// fanotify names a file by its directory's id and its name (FAN_REPORT_DFID_NAME); the
// kernel has merged repeated writes to one file into one event.
void Watcher::read_fanotify(Batch& batch) {
  alignas(struct fanotify_event_metadata) char buf[64 * 1024];
  for (;;) {
    ssize_t n = ::read(fan_fd_, buf, sizeof buf);
    if (n <= 0) return;
    for (auto* m = reinterpret_cast<struct fanotify_event_metadata*>(buf); FAN_EVENT_OK(m, n);
         m = FAN_EVENT_NEXT(m, n)) {
      ++batch.events;
      if (m->mask & FAN_Q_OVERFLOW) {
        resync(batch);
        continue;
      }
      const char* info = reinterpret_cast<const char*>(m) + m->metadata_len;
      const char* end = reinterpret_cast<const char*>(m) + m->event_len;
      while (info + sizeof(struct fanotify_event_info_header) <= end) {
        const auto* hdr = reinterpret_cast<const struct fanotify_event_info_header*>(info);
        if (hdr->len == 0) break;
        if (hdr->info_type == FAN_EVENT_INFO_TYPE_DFID_NAME) {
          const auto* fid = reinterpret_cast<const struct fanotify_event_info_fid*>(hdr);
          const auto* fh = reinterpret_cast<const struct file_handle*>(fid->handle);
          std::string_view name(reinterpret_cast<const char*>(fh->f_handle) + fh->handle_bytes);
          uint64_t dir = 0;
          {
            std::lock_guard lk(mu_);
            auto it = fids_.find(fid_key(&fid->fsid, *fh));
            if (it != fids_.end()) dir = it->second;
          }
          if (dir != 0 && name != ".") handle(dir, name, m->mask & FAN_MODIFY, batch);
        }
        info += hdr->len;
      }
    }
  }
}

// An attribute or data event of `inode`, whose attributes are now `st`.
void Watcher::check(Inode& inode, const struct stat& st, uint32_t mask, Batch& batch) {
  // Any attribute event may be an extended attribute's change: absences stored go.
  if (mask & IN_ATTRIB) inode.xattrs_changed();
  // Open files keep their pages: writes through the mount (served or passthrough) land
  // here too. Closed files lose theirs whatever the attributes say, if the kernel may hold
  // any: files only ever opened with passthrough have none (the kernel reads and maps the
  // backing file), so a write through such an open that is seen after the close costs
  // nothing once its attributes went back to the kernel.
  bool data = (mask & IN_MODIFY) && inode.paged.load() && inode.opens.load() == 0;
  uint64_t held = inode.kernel_attrs.load();
  // An attribute event while the kernel holds no attributes still goes to the invalidator:
  // the kernel module tier's stored extended attribute answers (which the kernel does not
  // cache, so they outlive its attributes) must go with it.
  if (!data && (held == attr_digest(st) || (held == 0 && !(mask & IN_ATTRIB)))) return;
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
    bool by_fanotify;  // its files' writes: an ignore mark mutes them
    {
      std::lock_guard lk(mu_);
      by_fanotify = fid_of_.count(dir) != 0;
    }
    for (const auto& [name, mask] : names) {
      if (fstatat(parent_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
        continue;  // gone already: its removal has an event of its own
      // The inode the kernel knows under that name, if any.
      auto child = table_.find(st.st_dev, st.st_ino);
      if (!child) continue;
      // Written while open for writing through the mount (passthrough writes land here):
      // mute its writes until the last such open closes.
      if (by_fanotify && (mask & IN_MODIFY) && S_ISREG(st.st_mode) &&
          child->writers.load() != 0 && !child->muted.load())
        mute(child);
      check(*child, st, mask, batch);
    }
  }
  auto check_self = [&](Inode& inode, uint32_t mask) {
    PathFd fd = inode.pin();  // ESTALE when the object is gone altogether
    if (fd.ok() && fstatat(fd, "", &st, AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW) == 0)
      check(inode, st, mask, batch);
  };
  for (const auto& [nodeid, mask] : batch.selves)
    if (auto dir = table_.get(nodeid)) check_self(*dir, mask);
  for (const auto& [nodeid, mask] : batch.recheck)
    if (auto file = table_.get(nodeid)) check_self(*file, mask);
  if (batch.unlinked)
    for (const auto& inode : table_.linked()) check_self(*inode, IN_ATTRIB);
}

void Watcher::run() {
  efuse::name_this_thread("efuse-watch");
  struct pollfd fds[3] = {{wake_fd_, POLLIN, 0}, {fd_, POLLIN, 0}, {fan_fd_, POLLIN, 0}};
  auto last_tick = Clock::now();
  for (;;) {
    if (poll(fds, fan_fd_ >= 0 ? 3 : 2, 1000) < 0 && errno != EINTR) break;
    if (stopping_.load()) break;
    uint64_t woken;
    if (fds[0].revents & POLLIN) (void)!::read(wake_fd_, &woken, sizeof woken);
    bool events = (fds[1].revents & POLLIN) || (fan_fd_ >= 0 && (fds[2].revents & POLLIN));
    bool tick = Clock::now() - last_tick >= kTickInterval;
    if (!events && !tick && !(fds[0].revents & POLLIN)) continue;
    // Let a burst of changes gather (the kernel merges repeated events meanwhile).
    if (events) std::this_thread::sleep_for(kBatchWindow);
    Batch batch;
    read_inotify(batch);
    if (fan_fd_ >= 0) read_fanotify(batch);
    std::vector<uint64_t> closed;
    {
      std::lock_guard lk(mu_);
      closed.swap(closed_);
    }
    for (uint64_t nodeid : closed) unmute(nodeid, batch);
    if (tick) {
      last_tick = Clock::now();
      expire_notes();
      // Muted files: an outside write shows within a tick.
      std::lock_guard lk(mu_);
      for (const auto& [nodeid, file] : muted_) batch.recheck.emplace_back(nodeid, 0);
    }
    resolve(batch);
    // Counted as sent; one the kernel did not take is the invalidator's to log and count
    // (efuse_invalidation_failures_total).
    for (const auto& key : batch.entries)
      (void)inv_.inval_entry(key.first, key.second, batch.not_only_created.count(key) == 0);
    for (uint64_t ino : batch.data) {
      if (auto inode = table_.get(ino)) inode->drop_read_ahead();
      (void)inv_.inval_inode(ino, true);
    }
    uint64_t sent = batch.entries.size() + batch.data.size();
    for (uint64_t ino : batch.attrs)
      if (!batch.data.count(ino)) {
        (void)inv_.inval_inode(ino, false);
        ++sent;
      }
    counters_.events.fetch_add(batch.events, std::memory_order_relaxed);
    counters_.invalidations.fetch_add(sent, std::memory_order_relaxed);
  }
}

}  // namespace efuse::fs::passthrough
