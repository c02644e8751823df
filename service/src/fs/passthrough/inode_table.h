// Inodes of the passthrough backend: keyed by the backing (st_dev, st_ino), never by path,
// so renames in the backing tree do not break them, and reached through O_PATH descriptors.
//
// The kernel keeps an inode for every dentry it caches, and a large tree (a kernel source
// extraction: 80,000+ entries) would need as many descriptors, far beyond RLIMIT_NOFILE.
// So descriptors are a bounded cache: past the budget, the least recently used inodes that
// nothing is using close theirs and are held by file handle (name_to_handle_at), to be
// reopened with open_by_handle_at (CAP_DAC_READ_SEARCH) on their next use. Inodes on
// another file system than the source's root, open files and lock holders keep their
// descriptors; without file handle support nothing is evicted.
//
// Eviction runs in a thread of the table's own ("efuse-evict", started with the root when
// file handles work): a pass scans every inode and closes a quarter of the budget's
// descriptors (131,072 under the unit's LimitNOFILE), a stall that the request crossing
// the budget used to pay. Requests evict themselves only past the hard limit (the budget
// and half of it again), which the thread falling far behind would take to reach. The
// budget is the process's, so crossing it wakes the threads of all tables (mounts), and
// each gives up descriptors in proportion to what it holds.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/result.h"
#include "common/slot_file.h"
#include "fs/filesystem.h"
#include "fs/node_table.h"
#include "fs/passthrough/backend_stats.h"

namespace efuse::fs::passthrough {

struct Inode;
class InodeTable;
class DirectStream;

// A backing object's identity: (st_dev, st_ino).
struct BackingKey {
  dev_t dev;
  ino_t ino;
  bool operator==(const BackingKey&) const = default;
};
struct BackingKeyHash {
  size_t operator()(const BackingKey& k) const noexcept {
    return std::hash<uint64_t>()(static_cast<uint64_t>(k.ino) * 0x9E3779B97F4A7C15ULL ^
                                 static_cast<uint64_t>(k.dev));
  }
};

// The file handle (a struct file_handle) of fd's object, any descriptor (O_PATH included);
// `flags` are added to AT_EMPTY_PATH for name_to_handle_at. Empty with errno set on failure.
std::vector<unsigned char> handle_of(int fd, int flags = 0);

// The O_PATH descriptor of an inode, pinned: it stays open (eviction skips the inode) until
// the PathFd is destroyed. Converts to int for use in *at() calls; check ok() first.
class PathFd {
 public:
  PathFd() = default;
  PathFd(PathFd&& o) noexcept : inode_(o.inode_), fd_(o.fd_), error_(o.error_) {
    o.inode_ = nullptr;
  }
  PathFd& operator=(PathFd&&) = delete;
  PathFd(const PathFd&) = delete;
  ~PathFd();

  bool ok() const { return fd_ >= 0; }
  Errno error() const { return Errno{error_}; }
  operator int() const { return fd_; }  // NOLINT: used as an fd argument

 private:
  friend struct Inode;
  PathFd(Inode* inode, int fd) : inode_(inode), fd_(fd) {}
  explicit PathFd(int error) : error_(error) {}

  Inode* inode_ = nullptr;
  int fd_ = -1;
  int error_ = EBADF;
};

// What the kernel caches of an inode's attributes (times to the nanosecond, size, blocks,
// mode, owner, links), folded into one non-zero number. Every change moves ctime, and the backing
// file systems that matter (ext4, xfs, btrfs, tmpfs since Linux 6.13) give a change after a
// stat() a ctime of its own even within one clock tick.
uint64_t attr_digest(const struct stat& st);

struct Inode {
  Inode(InodeTable& table, int fd, dev_t dev_, ino_t ino_, mode_t type_, uint64_t nodeid_);
  ~Inode();
  Inode(const Inode&) = delete;
  Inode& operator=(const Inode&) = delete;

  // How pin() reopens an evicted descriptor. kReadable, for a read-only open about to
  // share the descriptor (readable_fd), reopens a regular file O_RDONLY straight away: one
  // open_by_handle_at instead of an O_PATH one plus readable_fd's open through /proc.
  enum class Reopen { kPath, kReadable };
  // The O_PATH | O_NOFOLLOW descriptor, reopened by file handle if it was evicted. Fails
  // with ESTALE when the backing object no longer exists (removed while evicted).
  PathFd pin(Reopen how = Reopen::kPath);
  // Regular files: makes the pinned descriptor readable (an O_RDONLY open of the same
  // object put in its place with dup3, so the number stays), for plain read-only opens to
  // share. Returns the descriptor, or -errno. It stays readable until evicted.
  int readable_fd(const PathFd& pinned);

  const dev_t dev;
  const ino_t ino;
  const mode_t type;  // S_IFMT bits
  const uint64_t nodeid;
  // Its record in the restart state (InodeTable::record), if any; guarded by InodeTable::mu_.
  SlotFile::Slot* state_slot = nullptr;
  std::atomic<uint32_t> opens{0};    // open files through the mount
  std::atomic<uint32_t> writers{0};  // of which open for writing (Watcher::closed at 0)
  std::atomic<bool> muted{false};    // its write events are muted (Watcher::mute)
  // An open of this file was served through the kernel's page cache (not passthrough), so
  // the kernel may hold its pages, even after the last close (KEEP_CACHE, mmap).
  std::atomic<bool> paged{false};
  // A process under libefuse_intercept.so may be writing the backing file itself
  // (PassthroughFs::library_writing): the kernel gets its attributes valid for no time and
  // no open of it through the page cache, until no open for writing of it remains.
  std::atomic<bool> library_writes{false};
  std::atomic<int> watch{-1};        // inotify watch descriptor (directories)
  // steady_clock time (ns) efused last gave the kernel this inode's entry and attributes.
  std::atomic<int64_t> refreshed_ns{0};
  // attr_digest() of the attributes efused last gave the kernel; 0 once the watcher has
  // invalidated them (the kernel holds none until it asks again). An outside change shows
  // as a different digest; a change efused made itself and has replied with does not.
  std::atomic<uint64_t> kernel_attrs{0};
  // security.capability known absent. The kernel asks for it before the first write after
  // each attribute refresh and before every chown (two round trips per file tar extracts);
  // an absence read at xattr_seq S is stored as caps_absent == S + 1 with its time, and is
  // good while xattr_seq has not moved and the attribute timeout has not run out since.
  // xattr_seq moves after every SETXATTR and REMOVEXATTR through the mount and for every
  // attribute event the watcher sees (an outside setcap is one); absences are only used
  // while the watcher sees every change (PassthroughFs::caps_absent).
  std::atomic<uint64_t> xattr_seq{0};
  std::atomic<uint64_t> caps_absent{0};
  std::atomic<int64_t> caps_absent_ns{0};
  void xattrs_changed() { xattr_seq.fetch_add(1); }

  // A non-directory the kernel was last told has more than one link. Removing one of its
  // names behind efused's back changes its link count and ctime, which inotify reports only
  // for the name removed (the watcher then looks at these; see InodeTable::linked()).
  std::atomic<bool> linked{false};

  // Directories: what keeps the kernel's cached listing exact (the reasoning is in
  // passthrough_dir.cpp).
  std::atomic<uint64_t> changed{0};     // changes of this directory's entries
  std::atomic<uint64_t> settled{0};     // `changed` as of the last settling drop
  std::atomic<int64_t> changed_ns{0};   // steady_ns() of the latest change
  // An entry changed behind efused's back: a complete cached listing may miss it. Dropped
  // before the kernel next gets this directory's attributes, which it asks for (or gets)
  // before using that cache again.
  std::atomic<bool> listing_stale{false};
  // An entry of this directory was created, removed or renamed (call after the change).
  void entries_changed() {
    changed_ns.store(steady_ns());  // before the count: whoever sees it sees the time too
    changed.fetch_add(1);
  }

  // How the kernel does I/O for this file while it is open. The kernel refuses (ETXTBSY)
  // passthrough and page-cache opens of one inode at the same time, so the first open
  // decides for all until the last is released.
  std::mutex io_mu;
  uint32_t io_opens = 0;   // guarded by io_mu
  bool io_cached = false;  // guarded by io_mu
  accel::FileIo io;        // what its opens measured, for the choice (guarded by io_mu but
                           // its atomics)
  // Device or kernel path of the READs efused serves in a cache epoch (accel/device.h),
  // decided at the epoch's first READ (kDevUndecided until then) and reset at its end.
  static constexpr uint8_t kDevUndecided = 0, kDevKernel = 1, kDevDevice = 2;
  std::atomic<uint8_t> dev_state{kDevUndecided};  // written under io_mu
  std::atomic<int> direct_fd{-1};    // O_DIRECT descriptor while kDevDevice (io_mu)
  std::atomic<uint32_t> direct_align{0};
  accel::FileDevice dev_io;          // guarded by io_mu but its atomics
  // Readahead of the device path (fs/passthrough/device_io.h): made at the epoch's second
  // sequential device READ, dropped at its end (io_mu); dev_next is where the latest
  // device READ ended.
  std::shared_ptr<DirectStream> dev_stream;
  std::atomic<uint64_t> dev_next{0};
  // The file's data changed (through efused or behind its back): what was read ahead goes.
  void drop_read_ahead();

  // POSIX record locks: one open file description per lock owner, locked with OFD locks.
  // OFD locks carry no pid, so each owner also keeps the ranges it holds and the pid that
  // took them: F_GETLK reports the conflicting lock's pid, as natively.
  struct LockRange {
    uint64_t start, end;  // inclusive
    uint32_t type;
  };
  struct LockOwner {
    int fd = -1;
    uint32_t pid = 0;
    std::vector<LockRange> ranges;
  };
  std::mutex lock_mu;
  std::unordered_map<uint64_t, LockOwner> lock_fds;
  // flock() belongs to an open file description: opens sharing the inode's descriptor each
  // get their own for it, by file handle, on their first flock (guarded by lock_mu).
  std::unordered_map<uint64_t, int> flock_fds;

 private:
  friend class PathFd;
  friend class InodeTable;

  // Closes the descriptor if nothing has it pinned and the inode can be reopened; true when
  // it did. Never blocks on another thread's reopen of this inode.
  bool evict();
  // Whether `fd` (same st_dev and st_ino) is this inode's object, not a new one that got the
  // inode number of this one's removed object.
  bool same_object(int fd);
  int reopen(Reopen how);  // with fd_mu_ held: the new descriptor, or -errno

  InodeTable& table_;
  std::atomic<int> fd_;              // -1 while evicted
  std::atomic<uint32_t> pins_{0};    // PathFds alive
  std::atomic<uint32_t> last_use_;   // InodeTable eviction epoch of the latest pin()
  std::mutex fd_mu_;                 // reopen and eviction
  std::vector<unsigned char> handle_;  // struct file_handle, taken at first eviction
  // Cannot be held by handle (the root, other file systems, no handle): never evicted.
  // Written under fd_mu_; the eviction scan reads it without, to leave such inodes out.
  std::atomic<bool> pinned_forever_{false};
  bool readable_ = false;            // guarded by fd_mu_: fd_ is an O_RDONLY descriptor
};

class InodeTable {
 public:
  // Who evicts: the table's own thread (requests only past the hard limit), or, without
  // one, the request that crosses the budget (deterministic: for tests of what eviction
  // does rather than when).
  enum class Evictor { kThread, kRequests };
  // fd_budget: descriptors all tables of the process may hold before evicting; 0 = half of
  // RLIMIT_NOFILE's soft limit at construction.
  explicit InodeTable(size_t fd_budget = 0, Evictor evictor = Evictor::kThread);
  ~InodeTable();
  InodeTable(const InodeTable&) = delete;
  InodeTable& operator=(const InodeTable&) = delete;

  // Installs the root (nodeid 1) from an O_PATH fd on the source directory. The root's
  // file system is the one file handles are decoded against; the root is never evicted.
  void set_root(int fd, const struct stat& st);
  std::shared_ptr<Inode> get(uint64_t nodeid) const;
  // Finds the inode for (st.st_dev, st.st_ino) or adopts `fd` as a new one; adds one lookup
  // reference either way. Closes `fd` when an inode already existed. *created tells which.
  std::shared_ptr<Inode> ref(int fd, const struct stat& st, bool* created = nullptr);
  // The inode for a backing object, if the kernel knows it (no reference added).
  std::shared_ptr<Inode> find(dev_t dev, ino_t ino) const;
  // Drops `n` lookup references; the inode is forgotten at zero and returned (the
  // contract for counts efused never saw is in fs/node_table.h).
  std::shared_ptr<Inode> forget(uint64_t nodeid, uint64_t n);
  // FORGETs for more than the kernel was given (NodeTable::excess_forgets).
  uint64_t excess_forgets() const { return nodes_.excess_forgets(); }
  // The kernel tier's lookup counts (NodeTable::set_tier).
  void set_tier(TierLookups* tier) { nodes_.set_tier(tier); }
  // Every inode the kernel knows (for resynchronising after lost change events).
  std::vector<std::shared_ptr<Inode>> all() const;
  // Records the attributes efused replied with for `inode` (Inode::kernel_attrs, linked).
  void replied(Inode& inode, const struct stat& st);
  // The inodes with `linked` set.
  std::vector<std::shared_ptr<Inode>> linked() const;
  size_t size() const;
  BackendStats stats() const;
  // Whether evicted descriptors can be reopened (file handles work on the source).
  bool handles() const { return handles_; }
  // Why not: errno of name_to_handle_at or open_by_handle_at at set_root (EOPNOTSUPP: the
  // file system has none; EPERM: no CAP_DAC_READ_SEARCH, or a seccomp filter).
  int handles_errno() const { return handles_errno_; }

  // Restart state (inode_table_state.cpp). record(): from now on every inode the kernel
  // knows is kept in `file` with its lookup count and file handle (SlotFile::kNode), and the
  // next nodeid (kNodeCounter), so a new efused can resume the connection. False (nothing
  // recorded) without file handles, or when a handle cannot be taken.
  bool record(SlotFile* file);
  // Rebuilds the table from `file` (every inode evicted: reopened by file handle when first
  // used) and goes on recording into it. Call before any request; on failure (*why) the
  // table is as before.
  Status restore(SlotFile* file, std::string* why);

 private:
  // Writes `inode`'s record with `lookups` (mu_ held exclusively). False when the file is
  // full or the inode has no file handle.
  bool record_node(Inode& inode, uint64_t lookups);
  friend struct Inode;

  // Called after a descriptor was opened: over the budget it wakes the evictor threads
  // (every table's); over the hard limit (or without a thread) the caller evicts too.
  void fd_opened();
  void fd_closed();
  // One eviction pass: this table's share of bringing the process down to three quarters
  // of the budget, least recently used first; the descriptors it closed. The share is
  // taken of the count now, or for a woken thread of the count at the wake
  // (`held_at_wake`). One thread evicts a table at a time; the others go on. `by` counts
  // the pass.
  size_t evict_some(std::atomic<uint64_t>& by, uint64_t held_at_wake = 0);
  // Wakes the evictor thread of every table of the process; `held` = descriptors now.
  static void wake_evictors(uint64_t held);
  void evictor_loop();

  using Key = BackingKey;
  using KeyHash = BackingKeyHash;

  // mu_ guards by_key_ and linked_, and is taken before the node table's own lock, so that
  // a key and its nodeid change together.
  mutable std::shared_mutex mu_;
  NodeTable<Inode> nodes_;  // nodeids and lookup counts (fs/node_table.h)
  std::unordered_map<Key, std::shared_ptr<Inode>, KeyHash> by_key_;
  std::unordered_set<uint64_t> linked_;  // nodeids of inodes with `linked` set
  SlotFile* state_ = nullptr;             // guarded by mu_: the restart state, if recorded
  SlotFile::Slot* counter_slot_ = nullptr;

  const size_t fd_budget_;
  const Evictor evictor_kind_;
  int mount_fd_ = -1;       // the root opened O_RDONLY: open_by_handle_at's mount_fd
  dev_t root_dev_ = 0;
  bool handles_ = false;    // set once in set_root
  int handles_errno_ = 0;   // set once in set_root
  std::atomic<uint32_t> epoch_{0};
  std::mutex evict_mu_;
  std::atomic<uint64_t> fds_{0}, evictions_{0}, reopens_{0}, reopen_failures_{0};
  std::atomic<uint64_t> evictor_passes_{0}, request_passes_{0};
  // The evictor thread: woken by wake_evictors(), stopped by the destructor.
  std::mutex evictor_mu_;
  std::condition_variable evictor_cv_;
  bool evictor_woken_ = false;  // guarded by evictor_mu_
  bool evictor_stop_ = false;   // guarded by evictor_mu_
  std::thread evictor_;         // started by set_root when file handles work
};

}  // namespace efuse::fs::passthrough
