#include "fs/passthrough/inode_table.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "common/thread_name.h"
#include "fs/passthrough/proc_path.h"

namespace efuse::fs::passthrough {
namespace {

// O_PATH descriptors held by every inode table of the process: the budget is per process
// because RLIMIT_NOFILE is.
std::atomic<uint64_t> g_path_fds{0};

// Tables with an evictor thread. The budget is the process's: crossing it wakes all of
// them, and each gives up its share (a quiet mount with most of the descriptors, not only
// the busy one that crossed). g_wake_pending spares requests the mutex until an evictor
// has taken the last wake.
std::mutex g_tables_mu;
std::vector<InodeTable*> g_tables;
std::atomic<bool> g_wake_pending{false};
// The process's descriptors when the threads were last woken: every table's share comes from
// it, so that a table whose pass ran first does not leave the others nothing to do.
std::atomic<uint64_t> g_wake_held{0};

size_t default_budget() {
  struct rlimit rl {};
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 1 << 20;
  // The other half is for open files, passthrough backing files, lock descriptors,
  // directory streams, sockets.
  return std::max<size_t>(64, rl.rlim_cur / 2);
}

int open_handle(int mount_fd, std::vector<unsigned char>& handle, int flags) {
  return open_by_handle_at(mount_fd, reinterpret_cast<file_handle*>(handle.data()),
                           flags | O_CLOEXEC);
}

}  // namespace

std::vector<unsigned char> handle_of(int fd, int flags) {
  std::vector<unsigned char> buf(sizeof(file_handle) + MAX_HANDLE_SZ);
  auto* fh = reinterpret_cast<file_handle*>(buf.data());
  fh->handle_bytes = MAX_HANDLE_SZ;
  int mount_id = 0;
  if (name_to_handle_at(fd, "", fh, &mount_id, AT_EMPTY_PATH | flags) != 0) return {};
  buf.resize(sizeof(file_handle) + fh->handle_bytes);
  return buf;
}

// ---- PathFd / Inode ----------------------------------------------------------------------

PathFd::~PathFd() {
  if (inode_ != nullptr) inode_->pins_.fetch_sub(1);
}

uint64_t attr_digest(const struct stat& st) {
  // splitmix64 finaliser over the fields, one after another.
  auto mix = [](uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
  };
  uint64_t h = 0;
  for (uint64_t v : {static_cast<uint64_t>(st.st_ctim.tv_sec), static_cast<uint64_t>(st.st_ctim.tv_nsec),
                     static_cast<uint64_t>(st.st_mtim.tv_sec), static_cast<uint64_t>(st.st_mtim.tv_nsec),
                     static_cast<uint64_t>(st.st_size), static_cast<uint64_t>(st.st_blocks),
                     static_cast<uint64_t>(st.st_mode),
                     static_cast<uint64_t>(st.st_uid), static_cast<uint64_t>(st.st_gid),
                     static_cast<uint64_t>(st.st_nlink)})
    h = mix(h, v);
  return h == 0 ? 1 : h;
}

Inode::Inode(InodeTable& table, int fd, dev_t dev_, ino_t ino_, mode_t type_, uint64_t nodeid_)
    : dev(dev_), ino(ino_), type(type_), nodeid(nodeid_), table_(table), fd_(fd),
      last_use_(table.epoch_.load(std::memory_order_relaxed)) {
  pinned_forever_ = nodeid == 1 || !table.handles_ || dev != table.root_dev_;
}

Inode::~Inode() {
  for (auto& [owner, lo] : lock_fds) ::close(lo.fd);
  for (auto& [fh, fd] : flock_fds) ::close(fd);
  int fd = fd_.load();
  if (fd >= 0) {
    ::close(fd);
    table_.fd_closed();
  }
}

// Ordering (all seq_cst): pin() raises pins_ before it reads fd_; evict() clears fd_ before
// it reads pins_. Either pin() sees the descriptor and evict() then sees the pin and puts
// the descriptor back, or pin() sees -1 and waits on fd_mu_ for evict() to finish.
PathFd Inode::pin(Reopen how) {
  pins_.fetch_add(1);
  int fd = fd_.load();
  bool reopened = false;
  if (fd < 0) {
    std::lock_guard lk(fd_mu_);
    fd = fd_.load();
    if (fd < 0) {
      fd = reopen(how);
      if (fd < 0) {
        pins_.fetch_sub(1);
        return PathFd(-fd);
      }
      fd_.store(fd);
      reopened = true;
    }
  }
  uint32_t epoch = table_.epoch_.load(std::memory_order_relaxed);
  if (last_use_.load(std::memory_order_relaxed) != epoch)
    last_use_.store(epoch, std::memory_order_relaxed);
  if (reopened) table_.fd_opened();
  return PathFd(this, fd);
}

int Inode::readable_fd(const PathFd& pinned) {
  std::lock_guard lk(fd_mu_);
  int fd = pinned;  // a pin keeps the descriptor (and its number) from eviction
  if (readable_) return fd;
  int rd = ::open(ProcPath(fd), O_RDONLY | O_CLOEXEC);
  if (rd < 0) return -errno;
  // Requests using the O_PATH descriptor meanwhile hold their own reference to it.
  int rc = dup3(rd, fd, O_CLOEXEC);
  int err = errno;
  ::close(rd);
  if (rc < 0) return -err;
  readable_ = true;
  return fd;
}

int Inode::reopen(Reopen how) {
  bool readable = how == Reopen::kReadable && S_ISREG(type);
  int fd = open_handle(table_.mount_fd_, handle_, readable ? O_RDONLY : O_PATH);
  // Not readable by efused: the O_PATH descriptor, and readable_fd() reports why.
  if (fd < 0 && readable && errno != EMFILE && errno != ENFILE && errno != ESTALE) {
    readable = false;
    fd = open_handle(table_.mount_fd_, handle_, O_PATH);
  }
  int err = errno;
  if (fd >= 0) {
    // The handle names this object (ext4's carries the generation); the check guards
    // against a file system that reuses handles.
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino) {
      table_.reopens_.fetch_add(1, std::memory_order_relaxed);
      readable_ = readable;
      return fd;
    }
    ::close(fd);
    err = ESTALE;
  }
  table_.reopen_failures_.fetch_add(1, std::memory_order_relaxed);
  // EMFILE and ENFILE are the caller's to see; anything else means the object is gone.
  return -(err == EMFILE || err == ENFILE || err == ENOMEM ? err : ESTALE);
}

// While an inode holds its descriptor, the backing object cannot be freed and its inode
// number cannot be reused, so (st_dev, st_ino) identifies it. An evicted inode's number may
// belong to a new object by now: the file handles tell (ext4's carry the generation).
bool Inode::same_object(int fd) {
  std::lock_guard lk(fd_mu_);
  if (fd_.load() >= 0 || handle_.empty()) return true;
  return handle_of(fd) == handle_;
}

bool Inode::evict() {
  std::unique_lock lk(fd_mu_, std::try_to_lock);
  if (!lk.owns_lock() || pinned_forever_) return false;
  // Open files keep their descriptor: operations on an open, since unlinked file that come
  // without a file handle (xattrs) must still reach it.
  if (pins_.load() != 0 || opens.load() != 0) return false;
  int fd = fd_.load();
  if (fd < 0) return false;
  if (handle_.empty()) {
    handle_ = handle_of(fd);
    if (handle_.empty()) {
      pinned_forever_ = true;
      return false;
    }
  }
  fd_.store(-1);
  if (pins_.load() != 0) {
    fd_.store(fd);
    return false;
  }
  ::close(fd);
  readable_ = false;  // until reopen() makes a readable one
  return true;
}

// ---- InodeTable ----------------------------------------------------------------------------

InodeTable::InodeTable(size_t fd_budget, Evictor evictor)
    : fd_budget_(fd_budget != 0 ? fd_budget : default_budget()), evictor_kind_(evictor) {}

InodeTable::~InodeTable() {
  {
    std::lock_guard lk(g_tables_mu);
    std::erase(g_tables, this);
    // If the wake pending was meant for this table's thread, which will not take it now,
    // the next request over the budget must still reach the other tables.
    g_wake_pending.store(false);
  }
  {
    std::lock_guard lk(evictor_mu_);
    evictor_stop_ = true;
  }
  evictor_cv_.notify_one();
  if (evictor_.joinable()) evictor_.join();  // it may hold inodes of a pass
  // Inodes give their descriptors back to the counters: before those go.
  by_key_.clear();
  nodes_.clear();
  if (mount_fd_ >= 0) ::close(mount_fd_);
}

void InodeTable::set_root(int fd, const struct stat& st) {
  {
    std::unique_lock lk(mu_);
    root_dev_ = st.st_dev;
    // File handles need support from the file system and CAP_DAC_READ_SEARCH to open;
    // open_by_handle_at takes no O_PATH descriptor for the file system.
    auto handle = handle_of(fd);
    handles_errno_ = handle.empty() ? errno : 0;
    mount_fd_ = openat(fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (!handle.empty() && mount_fd_ >= 0) {
      int probe = open_handle(mount_fd_, handle, O_PATH);
      if (probe >= 0) {
        ::close(probe);
        handles_ = true;
      } else {
        handles_errno_ = errno;
      }
    }
    // Started here, not at the first need: a thread started by a request would inherit
    // its CPU affinity, scheduling policy and, inside a CredScope, its file system ids.
    if (handles_ && evictor_kind_ == Evictor::kThread && !evictor_.joinable()) {
      evictor_ = std::thread([this] { evictor_loop(); });
      std::lock_guard tl(g_tables_mu);
      g_tables.push_back(this);
    }
    auto root = std::make_shared<Inode>(*this, fd, st.st_dev, st.st_ino, st.st_mode & S_IFMT, 1);
    nodes_.set_root(root);
    by_key_[{st.st_dev, st.st_ino}] = root;
  }
  fd_opened();
}

std::shared_ptr<Inode> InodeTable::get(uint64_t nodeid) const {
  return nodes_.get(nodeid);
}

std::shared_ptr<Inode> InodeTable::ref(int fd, const struct stat& st, bool* created) {
  std::shared_ptr<Inode> inode;
  {
    std::unique_lock lk(mu_);
    auto it = by_key_.find({st.st_dev, st.st_ino});
    bool known = it != by_key_.end() && it->second->same_object(fd);
    if (created != nullptr) *created = !known;
    if (known) {
      ::close(fd);
      Inode& in = *it->second;
      nodes_.ref(in.nodeid);
      if (in.state_slot != nullptr)
        in.state_slot->v[1].store(nodes_.lookups(in.nodeid), std::memory_order_relaxed);
      return it->second;
    }
    // New, or an inode number reused after the object an evicted inode stood for was
    // removed: a new nodeid takes the key, the old one lives on until the kernel forgets it.
    inode = std::make_shared<Inode>(*this, fd, st.st_dev, st.st_ino, st.st_mode & S_IFMT,
                                    nodes_.allocate());
    nodes_.insert(inode->nodeid, inode, 1);
    by_key_[{st.st_dev, st.st_ino}] = inode;
    if (state_ != nullptr && !record_node(*inode, 1)) state_->mark_incomplete();
  }
  fd_opened();
  return inode;
}

std::shared_ptr<Inode> InodeTable::find(dev_t dev, ino_t ino) const {
  std::shared_lock lk(mu_);
  auto it = by_key_.find({dev, ino});
  return it == by_key_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<Inode>> InodeTable::all() const {
  return nodes_.all();
}

void InodeTable::replied(Inode& inode, const struct stat& st) {
  inode.kernel_attrs.store(attr_digest(st), std::memory_order_relaxed);
  bool linked = !S_ISDIR(st.st_mode) && st.st_nlink > 1;
  if (inode.linked.load(std::memory_order_relaxed) == linked) return;  // the common case
  std::unique_lock lk(mu_);
  inode.linked.store(linked);
  if (!linked) {
    linked_.erase(inode.nodeid);
  } else if (nodes_.get(inode.nodeid) != nullptr) {  // not if forgotten meanwhile
    linked_.insert(inode.nodeid);
  }
}

std::vector<std::shared_ptr<Inode>> InodeTable::linked() const {
  std::shared_lock lk(mu_);
  std::vector<std::shared_ptr<Inode>> out;
  out.reserve(linked_.size());
  for (uint64_t id : linked_)
    if (auto inode = nodes_.get(id)) out.push_back(std::move(inode));
  return out;
}

std::shared_ptr<Inode> InodeTable::forget(uint64_t nodeid, uint64_t n) {
  std::unique_lock lk(mu_);
  std::shared_ptr<Inode> dropped = nodes_.forget(nodeid, n);  // closed by the caller
  if (state_ != nullptr) {
    if (dropped != nullptr) {
      state_->free(dropped->state_slot);
      dropped->state_slot = nullptr;
    } else if (auto inode = nodes_.get(nodeid); inode && inode->state_slot != nullptr) {
      inode->state_slot->v[1].store(nodes_.lookups(nodeid), std::memory_order_relaxed);
    }
  }
  if (dropped != nullptr) {
    auto k = by_key_.find({dropped->dev, dropped->ino});
    if (k != by_key_.end() && k->second == dropped) by_key_.erase(k);
    linked_.erase(nodeid);
  }
  return dropped;
}

size_t InodeTable::size() const {
  return nodes_.size();
}

BackendStats InodeTable::stats() const {
  BackendStats s;
  s.inodes = size();
  s.fds = fds_.load(std::memory_order_relaxed);
  s.evictions = evictions_.load(std::memory_order_relaxed);
  s.reopens = reopens_.load(std::memory_order_relaxed);
  s.reopen_failures = reopen_failures_.load(std::memory_order_relaxed);
  s.evictor_passes = evictor_passes_.load(std::memory_order_relaxed);
  s.request_passes = request_passes_.load(std::memory_order_relaxed);
  return s;
}

void InodeTable::fd_opened() {
  fds_.fetch_add(1, std::memory_order_relaxed);
  uint64_t held = g_path_fds.fetch_add(1, std::memory_order_relaxed) + 1;
  if (held <= fd_budget_ || !handles_) return;  // without file handles nothing can be evicted
  if (evictor_kind_ == Evictor::kRequests || held > fd_budget_ + fd_budget_ / 2)
    evict_some(request_passes_);
  if (evictor_kind_ == Evictor::kThread) wake_evictors(held);
}

void InodeTable::fd_closed() {
  fds_.fetch_sub(1, std::memory_order_relaxed);
  g_path_fds.fetch_sub(1, std::memory_order_relaxed);
}

void InodeTable::wake_evictors(uint64_t held) {
  if (g_wake_pending.exchange(true)) return;
  g_wake_held.store(held);
  std::lock_guard tl(g_tables_mu);  // a table leaves the list before it goes
  if (g_tables.empty()) g_wake_pending.store(false);  // no thread to take it
  for (InodeTable* t : g_tables) {
    {
      std::lock_guard lk(t->evictor_mu_);
      t->evictor_woken_ = true;
    }
    t->evictor_cv_.notify_one();
  }
}

void InodeTable::evictor_loop() {
  name_this_thread("efuse-evict");
  std::unique_lock lk(evictor_mu_);
  for (;;) {
    evictor_cv_.wait(lk, [this] { return evictor_woken_ || evictor_stop_; });
    if (evictor_stop_) return;
    evictor_woken_ = false;
    lk.unlock();
    // Wakes from here on run another pass: this one may have read the count before them.
    g_wake_pending.store(false);
    size_t closed = evict_some(evictor_passes_, g_wake_held.load());
    // Still over (opens during the passes): another round for every table, with the count
    // as it is now. A pass that found nothing to evict waits for the next request's wake.
    uint64_t held = g_path_fds.load(std::memory_order_relaxed);
    if (closed > 0 && held > fd_budget_) wake_evictors(held);
    lk.lock();
  }
}

// Evicts down to three quarters of the budget (batches keep the scans rare), least
// recently pinned first. Recency is coarse: pin() stamps the epoch, which each pass
// advances, so "older" means "not used since an earlier pass".
//
// The table's lock is held a slice at a time, never for the whole pass: the scan reads
// kScanBuckets buckets of the nodeid map per hold, and the inodes chosen are looked up
// again kEvictSlice at a time before their descriptors close. A table of 500,000 inodes
// would otherwise keep new lookups and forgets waiting for the whole scan. A rehash
// between two holds renumbers the buckets: the scan then goes on in the new numbering and
// may miss or repeat some inodes, which only makes this pass's choice a little less exact.
size_t InodeTable::evict_some(std::atomic<uint64_t>& by, uint64_t held_at_wake) {
  constexpr size_t kScanBuckets = 4096;
  constexpr size_t kEvictSlice = 1024;
  std::unique_lock ek(evict_mu_, std::try_to_lock);
  if (!ek.owns_lock()) return 0;
  uint64_t now = g_path_fds.load(std::memory_order_relaxed);
  if (now <= (held_at_wake != 0 ? fd_budget_ * 3 / 4 : fd_budget_)) return 0;
  // This table's share of what the process must give up, in proportion to what it holds
  // (rounded up), least recently used first within it.
  uint64_t held = std::max(now, held_at_wake);
  uint64_t mine = fds_.load(std::memory_order_relaxed);
  uint64_t want_all = held - fd_budget_ * 3 / 4;
  size_t want = mine >= held ? want_all : (want_all * mine + held - 1) / held;
  if (want == 0) return 0;
  by.fetch_add(1, std::memory_order_relaxed);

  std::vector<std::pair<uint32_t, uint64_t>> candidates;  // (last use, nodeid)
  candidates.reserve(fds_.load(std::memory_order_relaxed));
  auto consider = [&candidates](uint64_t nodeid, const Inode& inode) {
    if (inode.fd_.load(std::memory_order_relaxed) < 0 ||
        inode.pinned_forever_.load(std::memory_order_relaxed) ||
        inode.pins_.load(std::memory_order_relaxed) != 0 ||
        inode.opens.load(std::memory_order_relaxed) != 0)
      return;
    candidates.emplace_back(inode.last_use_.load(std::memory_order_relaxed), nodeid);
  };
  for (size_t bucket = 0; (bucket = nodes_.visit_buckets(bucket, kScanBuckets, consider)) != 0;) {
  }
  epoch_.fetch_add(1, std::memory_order_relaxed);
  if (candidates.size() > want) {
    std::nth_element(candidates.begin(), candidates.begin() + static_cast<ptrdiff_t>(want),
                     candidates.end());
    candidates.resize(want);
  }
  size_t closed = 0;
  std::vector<std::shared_ptr<Inode>> slice;
  for (size_t i = 0; i < candidates.size(); i += kEvictSlice) {
    slice.clear();
    for (size_t k = i; k < std::min(candidates.size(), i + kEvictSlice); ++k)
      if (auto inode = nodes_.get(candidates[k].second))
        slice.push_back(std::move(inode));  // forgotten meanwhile: nothing to evict
    for (auto& inode : slice) {
      if (!inode->evict()) continue;  // pinned, opened or evicted since the scan
      fd_closed();
      evictions_.fetch_add(1, std::memory_order_relaxed);
      ++closed;
    }
  }
  return closed;
}

}  // namespace efuse::fs::passthrough
