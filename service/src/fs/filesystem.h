// The Filesystem interface: the seam between the FUSE session and the backends.
//
// Backends never see wire structs; the session never sees backing paths. Every method
// returns its result (or an errno) and only the session replies, so each request gets
// exactly one reply. Every method defaults to ENOSYS.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "accel/io_path.h"
#include "common/clock.h"
#include "common/result.h"
#include "common/slot_file.h"

namespace efuse::fs {

class TierLookups;  // fs/node_table.h

// Who is asking: from the request header.
struct Context {
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t pid = 0;
  uint64_t unique = 0;
  // When the request arrived (CLOCK_MONOTONIC, ns; what std::chrono::steady_clock reads on
  // Linux), for a backend that times what it serves without a clock read of its own; 0 when
  // the caller did not say (a backend then reads the clock).
  int64_t now_ns = 0;
  // now_ns, or the clock when the caller did not say.
  int64_t now_or_clock() const {
    return now_ns != 0 ? now_ns : steady_ns();
  }
  // The caller's umask for CREATE, MKNOD and MKDIR when the kernel left masking to us
  // (FUSE_DONT_MASK): it applies only where the parent has no default ACL. 0 otherwise.
  uint32_t umask = 0;
  // FUSE_HANDLE_KILLPRIV_V2: the kernel asks the file system to clear set-user-ID and
  // (group-executable) set-group-ID bits with this WRITE, truncating SETATTR or O_TRUNC
  // open, because the caller lacks CAP_FSETID.
  bool kill_suidgid = false;
  // FUSE_SETXATTR_ACL_KILL_SGID: setting this POSIX ACL clears the set-group-ID bit, because
  // the caller is neither in the file's group nor has CAP_FSETID (as posix_acl_update_mode
  // does natively). Every backend applies it: memory when it updates the mode from the ACL,
  // passthrough after the backing file system did so as efused (which may keep the bit).
  bool kill_sgid = false;
};

// What the kernel granted at INIT, as far as backends care.
struct Capabilities {
  bool writeback_cache = false;
  bool passthrough = false;
  bool posix_locks = false;
  bool flock_locks = false;
};

// Caching and I/O policy a backend applies per request; replaced live on config reload.
struct Policy {
  double entry_timeout = 1.0;  // seconds the kernel may cache a name
  double attr_timeout = 1.0;   // seconds the kernel may cache attributes
  bool keep_cache = false;     // keep the page cache across opens (FOPEN_KEEP_CACHE)
  bool passthrough_io = true;  // offer backing fds for kernel passthrough when granted
  bool adaptive_io = true;     // ...choosing cache or passthrough per file (accel/io_path.h)
  accel::Settings adaptive;    // the adaptive schedulers' settings (mounts.yaml adaptive:)
};

struct Entry {
  uint64_t ino = 0;         // nodeid given to the kernel; 0 = negative entry
  uint64_t generation = 0;
  struct stat attr {};
  double entry_timeout = 0;
  double attr_timeout = 0;
};

struct Attr {
  struct stat attr {};
  double timeout = 0;
};

struct OpenInfo {
  uint64_t fh = 0;
  bool direct_io = false;
  bool keep_cache = false;
  bool nonseekable = false;
  // A backing fd the kernel may use for reads/writes/mmap directly (FUSE passthrough).
  // -1: serve I/O through the daemon. The session registers it if the kernel granted
  // passthrough; the fd stays owned by the backend.
  int passthrough_fd = -1;
};

struct Created {
  Entry entry;
  OpenInfo open;
};

struct SetattrRequest {
  bool set_mode = false, set_uid = false, set_gid = false, set_size = false;
  bool set_atime = false, set_mtime = false, atime_now = false, mtime_now = false;
  bool has_fh = false;
  uint64_t fh = 0;
  mode_t mode = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  uint64_t size = 0;
  struct timespec atime {}, mtime {};
};

struct Lock {
  uint64_t start = 0;
  uint64_t end = 0;  // inclusive; UINT64_MAX-ish = to EOF
  uint32_t type = 0;  // F_RDLCK, F_WRLCK, F_UNLCK
  uint32_t pid = 0;
};

// Where readdir puts entries; the session encodes them into the reply.
class DirSink {
 public:
  virtual ~DirSink() = default;
  virtual bool plus() const = 0;
  // Whether an entry with this name still fits (check before a lookup for plus).
  virtual bool fits(std::string_view name) const = 0;
  // Returns false when the entry did not fit (nothing was added).
  virtual bool add(std::string_view name, uint64_t ino, uint32_t dtype, uint64_t next_off) = 0;
  virtual bool add_plus(std::string_view name, const Entry& entry, uint64_t next_off) = 0;
};

// How a backend tells the kernel that something changed behind its back (exact
// invalidation of the kernel's name, attribute and data caches). Implemented by the mount,
// which sends FUSE notifications. inval_entry must not be called from a request handler:
// the kernel takes the directory's i_rwsem for it, which a pending request may hold, and
// would wait for that request. inval_inode takes no inode lock; for a directory (whose
// pages are its cached listing) a handler may call it.
class Invalidator {
 public:
  virtual ~Invalidator() = default;
  // Attributes, and when data_too the cached data (and readdir cache) of `ino`.
  // Each returns whether the kernel took the invalidation; ENOENT (it no longer knows the
  // object) means there was nothing to invalidate. The implementation logs and counts
  // failures; callers use the result for their own accounting.
  virtual Status inval_inode(uint64_t ino, bool data_too) = 0;
  // The name `name` in directory `parent` (positive or negative dentry). `appeared`: the
  // name only came into being (created behind efused's back), so a dentry the kernel holds
  // for it may already be the new object, perhaps some process's working directory: it is
  // expired (looked up again before its next use) rather than dropped, where the kernel can.
  virtual Status inval_entry(uint64_t parent, std::string_view name, bool appeared) = 0;
  // The kernel's cached listing of directory `dir` (its pages) and attributes, dropped by
  // the backend's own bookkeeping (a listing that may have raced a change, a moved
  // directory's ".."), not because of a change efused did not make: what the kernel module
  // tier knows of the directory's names stays (fuse/kernel_answers.h).
  virtual Status inval_listing(uint64_t dir) { return inval_inode(dir, true); }
};

// One series a backend exports to /metrics. The metrics layer adds the `mount` label and
// groups series by name into families, so each backend names and documents its own
// (docs/metrics.md lists every one). Series of one name must agree on help and type.
struct Metric {
  enum class Type { Gauge, Counter };
  const char* name;  // the family, e.g. "efuse_inodes" (static storage)
  const char* help;  // static storage
  Type type;
  double value;
  std::vector<std::pair<std::string, std::string>> labels = {};  // besides `mount`
};

class Filesystem {
 public:
  virtual ~Filesystem() = default;

  // INIT, first step: `offered` is what the kernel offers (and the mount's options allow);
  // the backend answers what it wants of it. The session grants the wanted part it can
  // combine (the kernel refuses writeback cache with passthrough opens; passthrough wins)
  // and then calls init() with the grant. Default: everything offered.
  virtual Capabilities negotiate(const Capabilities& offered) { return offered; }
  // INIT, second step: what was granted.
  virtual void init(const Capabilities&) {}
  virtual void set_policy(const Policy&) {}
  // Starts (non-null) or stops (null) telling the kernel about changes made behind the
  // mount's back. The invalidator must stay valid until set_invalidator(nullptr) returns.
  virtual void set_invalidator(Invalidator*) {}
  virtual void destroy() {}
  // The backend's own series for /metrics. Safe to call from any thread at any time
  // (scrapes).
  virtual std::vector<Metric> metrics() const { return {}; }
  // How the backend chose cache or passthrough per file (io_path: auto; accel/io_path.h):
  // for efusectl status and the D-Bus view. Empty for a backend without that choice. (The
  // same report reaches /metrics as efuse_io_path_* series through metrics().)
  virtual accel::IoPathReport io_path_report() const { return {}; }
  // Restart without remounting (common/slot_file.h). record_state: from now on keep in
  // `file` what a new efused needs to go on serving this connection (the nodeids and file
  // handles the kernel holds); false when the backend cannot (the mount is then not
  // resumed across a restart). restore_state: rebuild that from `file` before the first
  // request of a resumed connection, and go on recording; an error (*why) leaves the
  // backend unusable for it (the mount starts fresh instead).
  virtual bool record_state(SlotFile*) { return false; }
  // Whether record_state can work at all for this backend (checked before the transport is
  // chosen: transport auto prefers /dev/fuse for a mount a restart can keep).
  virtual bool can_record_state() const { return false; }
  virtual Status restore_state(SlotFile*, std::string* why) {
    *why = "this backend cannot resume a connection";
    return Errno{EOPNOTSUPP};
  }

  // libefuse_intercept.so changes backing files itself (daemon/intercept_server.cpp,
  // docs/intercept.md). `fd` is the process's own descriptor of the file, received over
  // the socket; the backend does not keep it. library_writing(): the process opened it for
  // writing and writes only once this returned: the kernel's cached attributes and pages of
  // the file are dropped, and none are cached again until no open for writing of it remains
  // (library_sweep() finds out). An error refuses (the library lets the kernel serve the
  // open instead). library_changed(): its attributes, ACLs or xattrs were just changed
  // through `fd`: the kernel's copy is dropped. Both are called from one thread only.
  virtual bool library_writes() const { return false; }
  virtual Status library_writing(int) { return Errno{EOPNOTSUPP}; }
  virtual Status library_changed(int) { return Errno{EOPNOTSUPP}; }
  // Forgets the files no longer open for writing anywhere; how many are still marked.
  virtual size_t library_sweep() { return 0; }
  // The hand-over: a process under the library that cannot open a backing file itself (the
  // directories above the backing directory are closed to it, or not in its mount
  // namespace) asks efused to. library_open() opens the regular file at `path` (relative to
  // the backing root, resolved beneath it without following any symlink) with `flags`
  // (common/intercept_abi.h EFUSE_IOPEN_FLAGS) and the caller's file system identity, so the
  // backing file system checks exactly what the kernel checks through the mount below the
  // mountpoint (modes, ACLs; no capability of efused's); an open for writing is marked as
  // library_writing() marks it. The descriptor is the caller's to close. From the intercept
  // server's one thread.
  struct LibraryCaller {
    uint32_t uid = 0;
    uint32_t gid = 0;
    std::vector<uint32_t> groups;  // supplementary
    // A directory the caller must be able to search, checked with its identity first: the
    // mountpoint's parent (the kernel path walks every directory down to the mountpoint;
    // a client talking to the socket directly must not get past one closed to it).
    std::string must_search;
  };
  virtual bool library_opens() const { return false; }
  virtual Result<int> library_open(std::string_view, int, const LibraryCaller&) {
    return Errno{EOPNOTSUPP};
  }
  // The hand-over by node (a backend that is the file system itself and keeps each regular
  // file's data in a file of its own: memory with its private tmpfs): the caller opened the
  // file O_PATH through the mount (so the kernel walked the path with its credentials) and
  // sent that descriptor; library_open_node() gets its nodeid and opens its data file with
  // `flags` (reading only) when the caller's identity may read the file by its mode and POSIX
  // ACL alone (no capabilities: what that refuses, the kernel answers). library_data_dev():
  // st_dev of those data files (0 when there are none). From the intercept server's thread.
  virtual uint64_t library_data_dev() const { return 0; }
  virtual Result<int> library_open_node(uint64_t, int, const LibraryCaller&) {
    return Errno{EOPNOTSUPP};
  }

  virtual Result<Entry> lookup(const Context&, uint64_t, std::string_view) { return Errno{ENOSYS}; }
  // Lookup counts. Every entry reply (lookup, create, mkdir, mknod, symlink, link, and each
  // readdirplus entry but . and ..) adds one to the node's count; FORGET and BATCH_FORGET
  // subtract nlookup. A node goes at zero (or, in a backend that is the file system itself,
  // when its last name goes too), and its nodeid is never reused while the kernel may still
  // name it. Backends keep these counts in fs::NodeTable (fs/node_table.h), which also holds
  // the written contract for lookups the kernel answers without efused seeing them (the
  // kernel tier raises counts efused never saw: a FORGET for more than efused counted must
  // neither drop a node the kernel still holds nor leak one).
  virtual void forget(uint64_t /*ino*/, uint64_t /*nlookup*/) {}
  // Whether node `ino` is still there (the kernel holds lookups of it): false once a
  // forget() dropped it.
  virtual bool holds(uint64_t /*ino*/) const { return true; }
  // Connects (non-null) or disconnects (null) the kernel module tier's lookup counts to the
  // backend's node table (NodeTable::set_tier). Set before the handlers can answer a
  // positive LOOKUP, reset before the tier goes.
  virtual void set_tier(TierLookups*) {}
  // Whether every change of what the backend serves reaches it now: made through the mount,
  // or seen by a watcher that watches every directory the kernel knows and tells the
  // kernel (set_invalidator). The kernel module tier then keeps its answers beyond the
  // validity they gave the kernel (fuse/kernel_answers.h). Safe to call from any thread.
  virtual bool sees_every_change() const { return false; }
  // `dir` is a directory mkdir() just made: whether it holds no entry now and every later
  // change of its entries reaches the backend (made through the mount, or seen by a watcher
  // that was watching it before it was found empty). The kernel module tier then answers
  // lookups of names it lacks without asking (fuse/kernel_answers.h). Safe from any thread.
  virtual bool new_dir_complete(uint64_t /*dir*/) { return false; }
  // The kernel refused the passthrough_fd of an open of `ino`: the session serves its I/O,
  // through the kernel's page cache.
  virtual void passthrough_refused(uint64_t /*ino*/) {}
  // The session registered the backing file of a passthrough open of `ino` with the kernel
  // (FUSE_DEV_IOC_BACKING_OPEN), or closed its id after the last passthrough open
  // (FUSE_DEV_IOC_BACKING_CLOSE, before release()), which took `ns`: what passthrough cost
  // efused for it.
  virtual void passthrough_registered(uint64_t /*ino*/, uint64_t /*ns*/) {}
  virtual Result<Attr> getattr(const Context&, uint64_t, const uint64_t* /*fh*/) { return Errno{ENOSYS}; }
  virtual Result<Attr> setattr(const Context&, uint64_t, const SetattrRequest&) { return Errno{ENOSYS}; }
  virtual Result<std::string> readlink(const Context&, uint64_t) { return Errno{ENOSYS}; }
  virtual Result<Entry> symlink(const Context&, uint64_t, std::string_view, std::string_view) { return Errno{ENOSYS}; }
  virtual Result<Entry> mknod(const Context&, uint64_t, std::string_view, mode_t, dev_t) { return Errno{ENOSYS}; }
  virtual Result<Entry> mkdir(const Context&, uint64_t, std::string_view, mode_t) { return Errno{ENOSYS}; }
  virtual Status unlink(const Context&, uint64_t, std::string_view) { return Errno{ENOSYS}; }
  virtual Status rmdir(const Context&, uint64_t, std::string_view) { return Errno{ENOSYS}; }
  virtual Status rename(const Context&, uint64_t, std::string_view, uint64_t, std::string_view,
                        uint32_t /*flags*/) { return Errno{ENOSYS}; }
  virtual Result<Entry> link(const Context&, uint64_t, uint64_t, std::string_view) { return Errno{ENOSYS}; }

  virtual Result<OpenInfo> open(const Context&, uint64_t, int /*flags*/) { return Errno{ENOSYS}; }
  virtual Result<Created> create(const Context&, uint64_t, std::string_view, mode_t, int) { return Errno{ENOSYS}; }
  virtual Result<size_t> read(const Context&, uint64_t, uint64_t /*fh*/, uint64_t /*off*/,
                              std::span<char>) { return Errno{ENOSYS}; }
  virtual Result<size_t> write(const Context&, uint64_t, uint64_t /*fh*/, uint64_t /*off*/,
                               std::span<const char>) { return Errno{ENOSYS}; }
  virtual Status flush(const Context&, uint64_t, uint64_t /*fh*/, uint64_t /*lock_owner*/) { return Errno{ENOSYS}; }
  virtual Status release(const Context&, uint64_t, uint64_t /*fh*/) { return {}; }
  virtual Status fsync(const Context&, uint64_t, uint64_t /*fh*/, bool /*datasync*/) { return Errno{ENOSYS}; }

  virtual Result<OpenInfo> opendir(const Context&, uint64_t, int) { return Errno{ENOSYS}; }
  virtual Status readdir(const Context&, uint64_t, uint64_t /*fh*/, uint64_t /*off*/, DirSink&) { return Errno{ENOSYS}; }
  virtual Status releasedir(const Context&, uint64_t, uint64_t /*fh*/) { return {}; }
  virtual Status fsyncdir(const Context&, uint64_t, uint64_t /*fh*/, bool) { return Errno{ENOSYS}; }

  virtual Result<struct statvfs> statfs(const Context&, uint64_t) { return Errno{ENOSYS}; }
  virtual Status access(const Context&, uint64_t, int /*mask*/) { return Errno{ENOSYS}; }

  virtual Status setxattr(const Context&, uint64_t, std::string_view, std::span<const char>, int) { return Errno{ENOSYS}; }
  // An empty buffer asks for the value's size.
  virtual Result<size_t> getxattr(const Context&, uint64_t, std::string_view, std::span<char>) { return Errno{ENOSYS}; }
  virtual Result<size_t> listxattr(const Context&, uint64_t, std::span<char>) { return Errno{ENOSYS}; }
  virtual Status removexattr(const Context&, uint64_t, std::string_view) { return Errno{ENOSYS}; }

  virtual Status fallocate(const Context&, uint64_t, uint64_t /*fh*/, int /*mode*/, uint64_t, uint64_t) { return Errno{ENOSYS}; }
  virtual Result<uint64_t> lseek(const Context&, uint64_t, uint64_t /*fh*/, uint64_t, int) { return Errno{ENOSYS}; }
  virtual Result<size_t> copy_file_range(const Context&, uint64_t /*ino_in*/, uint64_t /*fh_in*/,
                                         uint64_t /*off_in*/, uint64_t /*ino_out*/, uint64_t /*fh_out*/,
                                         uint64_t /*off_out*/, uint64_t /*len*/, uint64_t /*flags*/) {
    return Errno{ENOSYS};
  }

  // Record locks (POSIX, owner-scoped) and flock (per open file).
  virtual Result<Lock> getlk(const Context&, uint64_t, uint64_t /*fh*/, uint64_t /*owner*/, const Lock&) { return Errno{ENOSYS}; }
  // Never blocks: returns EAGAIN on conflict (the session implements waiting).
  virtual Status setlk(const Context&, uint64_t, uint64_t /*fh*/, uint64_t /*owner*/, const Lock&) { return Errno{ENOSYS}; }
  virtual Status flock(const Context&, uint64_t, uint64_t /*fh*/, int /*op: LOCK_SH/EX/UN*/) { return Errno{ENOSYS}; }
};

}  // namespace efuse::fs
