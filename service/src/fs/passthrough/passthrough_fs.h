// Passthrough (stacking) backend: serves a backing directory tree.
#pragma once

#include <fcntl.h>

#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include "fs/filesystem.h"
#include "fs/handle_table.h"
#include "fs/passthrough/device_io.h"
#include "fs/passthrough/inode_table.h"
#include "fs/passthrough/watcher.h"

namespace efuse::fs::passthrough {


// The mode a new file, directory or node gets: `mode` less the caller's umask unless the
// parent directory has a default ACL (which then governs, as natively).
mode_t creation_mode(int dirfd, mode_t mode, uint32_t umask);

// chmod of fd's file (any descriptor, O_PATH included). fchmodat2 (Linux 6.6) takes the
// descriptor itself with AT_EMPTY_PATH; older kernels go through the /proc path, a lookup
// of four more components. -1 with errno on failure, as chmod(2).
int chmod_fd(int fd, mode_t mode);

// Bits a write, truncate or O_TRUNC open by a caller without CAP_FSETID clears: set-user-ID,
// and set-group-ID when the group may execute (as the VFS does natively).
mode_t privs_to_kill(mode_t mode);

// The flags a backing file is opened with for a FUSE open with `flags`.
int backing_open_flags(int flags, bool writeback);

// Clears them on fd's file (any descriptor, O_PATH included). efused writes with
// CAP_FSETID, so the backing file system would keep them; with FUSE_HANDLE_KILLPRIV_V2 the
// kernel leaves this to us (and in return stops asking for security.capability before
// every write).
Status kill_suidgid(int fd);

// A file handle (fh) is the backing file's descriptor, usable only while it is in the
// backend's HandleTable (an unknown fh is EBADF, see handle_table.h). Plain read-only opens of a regular
// file share the inode's own descriptor instead, made readable once (Inode::readable_fd),
// so OPEN, FLUSH and RELEASE of a file read again and again cost no system call. Such a
// handle carries kSharedFh, and in bits 32-61 a serial number that tells the opens apart
// (bit 62 stays clear: kSharedFh | kWriterFh is EFUSE_HANDLER_KERNEL_FH, the fh of an open
// efuse.ko's OPEN handler answered, efuse_handler.h).
inline constexpr uint64_t kSharedFh = 1ULL << 63;
// A private handle open for writing carries kWriterFh (Inode::writers counts them); in a
// shared handle that bit belongs to the serial number.
inline constexpr uint64_t kWriterFh = 1ULL << 62;
inline int fd_of(uint64_t fh) { return static_cast<int>(fh & 0xffffffffu); }
inline bool is_shared(uint64_t fh) { return (fh & kSharedFh) != 0; }
inline bool is_writer(uint64_t fh) { return !is_shared(fh) && (fh & kWriterFh) != 0; }

class PassthroughFs final : public Filesystem {
 public:
  // Opens the source directory; throws std::system_error when it is unusable.
  PassthroughFs(std::string source, const Policy& policy);
  ~PassthroughFs() override;  // closes library_marks_' descriptors too

  // Wants all of it: writeback cache, passthrough, POSIX locks and flock.
  Capabilities negotiate(const Capabilities& offered) override { return offered; }
  void init(const Capabilities& caps) override;
  void set_policy(const Policy& policy) override;
  void set_invalidator(Invalidator* inv) override;
  // How long after a directory's latest change its cached listing settles (passthrough_dir.cpp;
  // kListingGraceNs unless a test sets it).
  void set_listing_grace_ns(int64_t ns) { listing_grace_ns_.store(ns); }

  Result<Entry> lookup(const Context&, uint64_t parent, std::string_view name) override;
  void forget(uint64_t ino, uint64_t nlookup) override;
  void set_tier(TierLookups* tier) override {
    inodes_.set_tier(tier);
    kernel_tier_.store(tier != nullptr, std::memory_order_relaxed);
  }
  bool sees_every_change() const override { return cache_listings(); }
  bool new_dir_complete(uint64_t dir) override;
  void passthrough_refused(uint64_t ino) override;
  void passthrough_registered(uint64_t ino, uint64_t ns) override;
  Result<Attr> getattr(const Context&, uint64_t ino, const uint64_t* fh) override;
  Result<Attr> setattr(const Context&, uint64_t ino, const SetattrRequest&) override;
  Result<std::string> readlink(const Context&, uint64_t ino) override;
  Result<Entry> symlink(const Context&, uint64_t parent, std::string_view name,
                        std::string_view target) override;
  Result<Entry> mknod(const Context&, uint64_t parent, std::string_view name, mode_t mode,
                      dev_t rdev) override;
  Result<Entry> mkdir(const Context&, uint64_t parent, std::string_view name, mode_t mode) override;
  Status unlink(const Context&, uint64_t parent, std::string_view name) override;
  Status rmdir(const Context&, uint64_t parent, std::string_view name) override;
  Status rename(const Context&, uint64_t parent, std::string_view name, uint64_t newparent,
                std::string_view newname, uint32_t flags) override;
  Result<Entry> link(const Context&, uint64_t ino, uint64_t newparent,
                     std::string_view newname) override;

  Result<OpenInfo> open(const Context&, uint64_t ino, int flags) override;
  // Open handles in the table (tests).
  size_t open_handles() const { return handles_.size(); }
  Result<Created> create(const Context&, uint64_t parent, std::string_view name, mode_t mode,
                         int flags) override;
  Result<size_t> read(const Context&, uint64_t ino, uint64_t fh, uint64_t off,
                      std::span<char> buf) override;
  Result<size_t> write(const Context&, uint64_t ino, uint64_t fh, uint64_t off,
                       std::span<const char> data) override;
  Status flush(const Context&, uint64_t ino, uint64_t fh, uint64_t lock_owner) override;
  Status release(const Context&, uint64_t ino, uint64_t fh) override;
  Status fsync(const Context&, uint64_t ino, uint64_t fh, bool datasync) override;

  Result<OpenInfo> opendir(const Context&, uint64_t ino, int flags) override;
  Status readdir(const Context&, uint64_t ino, uint64_t fh, uint64_t off, DirSink&) override;
  Status releasedir(const Context&, uint64_t ino, uint64_t fh) override;
  Status fsyncdir(const Context&, uint64_t ino, uint64_t fh, bool datasync) override;

  Result<struct statvfs> statfs(const Context&, uint64_t ino) override;
  Status access(const Context&, uint64_t ino, int mask) override;

  Status setxattr(const Context&, uint64_t ino, std::string_view name,
                  std::span<const char> value, int flags) override;
  Result<size_t> getxattr(const Context&, uint64_t ino, std::string_view name,
                          std::span<char> buf) override;
  Result<size_t> listxattr(const Context&, uint64_t ino, std::span<char> buf) override;
  Status removexattr(const Context&, uint64_t ino, std::string_view name) override;

  Status fallocate(const Context&, uint64_t ino, uint64_t fh, int mode, uint64_t off,
                   uint64_t len) override;
  Result<uint64_t> lseek(const Context&, uint64_t ino, uint64_t fh, uint64_t off,
                         int whence) override;
  Result<size_t> copy_file_range(const Context&, uint64_t ino_in, uint64_t fh_in, uint64_t off_in,
                                 uint64_t ino_out, uint64_t fh_out, uint64_t off_out, uint64_t len,
                                 uint64_t flags) override;

  bool holds(uint64_t ino) const override { return inodes_.get(ino) != nullptr; }

  Result<Lock> getlk(const Context&, uint64_t ino, uint64_t fh, uint64_t owner,
                     const Lock&) override;
  Status setlk(const Context&, uint64_t ino, uint64_t fh, uint64_t owner, const Lock&) override;
  Status flock(const Context&, uint64_t ino, uint64_t fh, int op) override;

  // libefuse_intercept.so's own writes (passthrough_library.cpp, docs/intercept.md).
  bool library_writes() const override { return !caps_.writeback_cache; }
  Status library_writing(int fd) override;
  Status library_changed(int fd) override;
  size_t library_sweep() override;
  bool library_opens() const override { return root_; }
  Result<int> library_open(std::string_view path, int flags, const LibraryCaller& caller) override;
  // Files marked now (tests).
  size_t library_marked() const;

  // Its counters (for tests) and their /metrics series (passthrough_metrics.cpp).
  BackendStats backend_stats() const;
  std::vector<Metric> metrics() const override;
  accel::IoPathReport io_path_report() const override;
  // Restart state (passthrough_state.cpp): inodes (InodeTable::record) and open handles.
  bool record_state(SlotFile* file) override;
  bool can_record_state() const override { return true; }
  Status restore_state(SlotFile* file, std::string* why) override;

 private:
  // The descriptor behind file handle `fh`: the number it carries, or for a handle a
  // previous efused gave the kernel (restore_state) the descriptor reopened for it.
  int fd_of(uint64_t fh) const {
    if (has_restored_.load(std::memory_order_acquire)) {
      std::shared_lock lk(state_mu_);
      if (auto it = restored_fds_.find(fh); it != restored_fds_.end()) return it->second;
    }
    return passthrough::fd_of(fh);
  }
  // Restart state of an open handle: recorded after it was added to handles_, dropped at
  // its release (closing a restored handle's descriptor: true when `fh` was one).
  void record_open(uint64_t fh, uint64_t nodeid, int flags, bool cached);
  bool forget_open(uint64_t fh);
  // A new private handle must not carry the number of a handle restored from a previous
  // efused the kernel still holds: moves the descriptor to another number if it does.
  void avoid_restored(OpenInfo& info);

  struct DirHandle;

  Result<Entry> lookup_at(int dirfd, const char* name);
  Result<Entry> entry_for(int fd);  // adopts fd (O_PATH) and returns its entry
  Result<int> lock_fd(Inode& inode, uint64_t fh, uint64_t owner);
  Result<OpenInfo> open_file(const Context&, uint64_t ino, int flags);
  uint32_t holder_pid(const Inode& inode, uint64_t owner, const struct flock& conflict);
  // Chooses the I/O path of a new open of `inode` (see Inode::io_cached) and fills it in:
  // the first open of the inode asks io_policy_ (accel/io_path.h), later ones join it.
  // Inode::caps_absent: whether an absence of security.capability read at xattr_seq `seq`
  // still holds at `now_ns` (the request's arrival, Context::now_or_clock()), and storing one.
  bool caps_absent(const Inode& inode, uint64_t seq, int64_t now_ns) const;
  void note_caps_absent(Inode& inode, uint64_t seq, int64_t now_ns);
  // `known_st`: the file's stat when the caller has just taken it (CREATE), else fstat(fd).
  OpenInfo open_info(Inode& inode, int fd, int flags, int64_t now_ns,
                     const struct stat* known_st = nullptr);
  // A READ or WRITE efused served for `ino`, started at steady_ns() `start`.
  void served(uint64_t ino, int64_t start);
  // The device path (accel/device.h, device_io.h): the O_DIRECT descriptor the READs of
  // `inode`'s cache epoch use, or -1 for the kernel path; decides at the epoch's first READ
  // (`fd`: the handle's descriptor). end_device_epoch(): at its last release (io_mu held).
  int device_fd(Inode& inode, int fd);
  void end_device_epoch(Inode& inode, int64_t now_ns);
  // The device path's readahead of the inode (fs/passthrough/device_io.h): its stream once
  // two device READs of the epoch followed each other, else null (one synchronous O_DIRECT
  // read per READ). A stream reads ahead as far as the kernel reads ahead of a buffered
  // reader of the same device (stream_depth()), and no further than the file's end; the
  // mount's streams hold at most kStreamBudget bytes of buffers together.
  std::shared_ptr<DirectStream> device_stream(Inode& inode, int dfd, uint64_t off, size_t len);
  // Data of `ino` changed through efused: drops what its stream read ahead.
  void data_changed(uint64_t ino);
  // How far a stream of a file on `dev` reads ahead: the device's read_ahead_kb within
  // kMinDepth..kMaxDepth, else kDefaultDepth; asked once per device, logged once.
  size_t stream_depth(dev_t dev);
  static constexpr size_t kStreamBudget = size_t{64} << 20;
  static constexpr size_t kMinDepth = size_t{256} << 10;
  static constexpr size_t kMaxDepth = size_t{16} << 20;
  static constexpr size_t kDefaultDepth = size_t{1} << 20;
  std::atomic<int> streams_{0};
  std::atomic<size_t> stream_bytes_{0};  // buffers the streams hold (kStreamBudget at most)
  StreamCounters stream_counters_;
  // Direct I/O alignment of the backing file system `dev` (0: none), asked once per file
  // system; the first one without says so in the log.
  uint32_t direct_alignment(dev_t dev, int fd);
  // Whether every change behind efused's back reaches the kernel as an invalidation.
  bool exact_invalidation() const;
  // Inodes whose entry and attributes the kernel got after this time (Inode::refreshed_ns)
  // are less than half their timeouts old: a listing need not send them again.
  int64_t fresh_since_ns() const;
  // Long timeouts are only exact while the watcher sees every directory: once a watch could
  // not be added, the mount's entry and attr timeouts are capped at kUnwatchedTimeout.
  static constexpr double kUnwatchedTimeout = 1.0;
  double cache_timeout(const std::atomic<double>& configured) const;
  // The attribute timeout of `inode`'s replies: 0 while the library may write it.
  double attr_timeout_of(const Inode& inode) const;
  // A regular file the kernel just got to know: marked if the library writes it
  // (library_marks_ holds files the kernel did not know when they were marked).
  void library_mark_new(Inode& inode);
  std::shared_ptr<Watcher> watcher() const { return watcher_.load(std::memory_order_acquire); }
  Result<std::shared_ptr<DirHandle>> dir_handle(uint64_t ino, uint64_t fh);
  // Whether the kernel may cache listings: while invalidation is exact (passthrough_dir.cpp).
  bool cache_listings() const;
  // Before the empty READDIR reply that completes the kernel's cache of `dir`'s listing:
  // drops that cache if a change may have raced the replies in it (passthrough_dir.cpp).
  void end_of_listing(Inode& dir);
  // Drops the kernel's cached listing of `dir` (its pages: the cache is reset when next used).
  void drop_listing(Inode& dir);
  // The kernel gets `inode`'s attributes `st` (every reply that carries them goes through
  // here): records them, and drops a directory's stale listing first (Inode::listing_stale).
  void replied(Inode& inode, const struct stat& st);
  std::atomic<int64_t> listing_grace_ns_{kListingGraceNs};

  // A change of ours to an entry of `dir`. The watcher hears of it at once (so that it does
  // not echo the event), the directory's listing cache when the change is done.
  class [[nodiscard]] EntryChange {
   public:
    explicit EntryChange(Inode& dir) : dir_(dir) {}
    ~EntryChange() { dir_.entries_changed(); }
    EntryChange(const EntryChange&) = delete;
    EntryChange& operator=(const EntryChange&) = delete;

   private:
    Inode& dir_;
  };
  EntryChange note_entry(Inode& dir, std::string_view name, int events = 1);

  std::string source_;
  Capabilities caps_;
  std::atomic<double> entry_timeout_;
  std::atomic<double> attr_timeout_;
  std::atomic<bool> keep_cache_;
  std::atomic<bool> passthrough_io_;
  std::atomic<bool> adaptive_io_;
  std::atomic<bool> kernel_tier_{false};  // on efuse.ko with handlers: opens answered there
  accel::IoPathPolicy io_policy_;  // cache or passthrough per file, under io_path: auto
  accel::DevicePolicy dev_policy_;  // device or kernel for the reads efused serves (auto)
  std::atomic<bool> device_path_{false};  // io_path auto: dev_policy_ decides
  std::mutex direct_mu_;
  std::unordered_map<dev_t, uint32_t> direct_align_;  // guarded by direct_mu_
  std::unordered_map<dev_t, size_t> stream_depth_;    // guarded by direct_mu_
  bool direct_none_logged_ = false;                   // guarded by direct_mu_
  bool stream_failure_logged_ = false;                // guarded by direct_mu_
  bool root_;  // running with CAP_SYS_ADMIN-level privileges: switch fsuid/fsgid for creation
  InodeTable inodes_;
  Watcher::Counters watch_counters_;  // declared first: outlives the watchers using it
  std::atomic<std::shared_ptr<Watcher>> watcher_;
  std::atomic<Invalidator*> inv_{nullptr};
  std::atomic<uint64_t> shared_serial_{0};  // also counts the shared opens
  std::atomic<uint64_t> listing_drops_{0};

  HandleTable handles_;  // every open fh the kernel holds

  // Backing files libefuse_intercept.so opened for writing (passthrough_library.cpp), by
  // (st_dev, st_ino), each with an O_PATH descriptor to test for writers; changed only by
  // the intercept server's thread, read by lookups (library_mark_new).
  mutable std::mutex library_mu_;
  std::unordered_map<BackingKey, int, BackingKeyHash> library_marks_;  // guarded by library_mu_
  std::atomic<size_t> library_mark_count_{0};
  std::atomic<uint64_t> library_refusals_{0};

  // Restart state: the file recorded into (null: none), the slot of each open handle, and
  // the descriptors of handles restored from a previous efused (by fh).
  mutable std::shared_mutex state_mu_;
  std::atomic<SlotFile*> state_{nullptr};
  std::unordered_map<uint64_t, SlotFile::Slot*> open_slots_;  // guarded by state_mu_
  std::unordered_map<uint64_t, int> restored_fds_;            // guarded by state_mu_
  std::atomic<bool> has_restored_{false};

  std::mutex dirs_mu_;
  uint64_t next_dir_fh_ = 1;  // 0 is the handle of directories opened without OPENDIR
  std::atomic<bool> no_opendir_{false};  // OPENDIR answered ENOSYS: the kernel sends no more
  std::unordered_map<uint64_t, std::shared_ptr<DirHandle>> dirs_;
};

// The inode `id` of the request, or ESTALE (the kernel asked about a forgotten nodeid).
#define GET_INODE(var, id)    \
  auto var = inodes_.get(id); \
  if (!var) return Errno{ESTALE};

// A file handle the kernel holds, or EBADF (never a descriptor it did not get from us).
#define CHECK_FH(fh) \
  if (!handles_.contains(fh)) return Errno{EBADF};

// `inode`'s O_PATH descriptor, pinned for the rest of the scope (see InodeTable).
#define PIN_FD(var, inode)     \
  PathFd var = (inode)->pin(); \
  if (!var.ok()) return var.error();

}  // namespace efuse::fs::passthrough
