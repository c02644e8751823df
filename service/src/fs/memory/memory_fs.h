// The memory backend (`backend: memory`): a file system that lives in efused's memory and
// is gone when the mount goes (unmount, stop, remount, crash).
//
// - Inodes: in the shared node table (fs/node_table.h), a hash table by nodeid; st_ino is
//   the nodeid. An inode lives while it has a name or the kernel holds it.
// - Directories: an ordered name index, plus a cookie per entry that only grows. READDIR
//   offsets are cookies, so an offset the kernel holds stays valid whatever is created,
//   removed or renamed meanwhile: entries removed are not returned, entries added after the
//   offset are (POSIX leaves both open).
// - File data: when efused may mount (root), in a private tmpfs (store.h) sized to
//   `memory.max_bytes`, one data file per regular file, which FUSE passthrough opens use as
//   their backing file (reads, writes and mmap never reach efused). Otherwise 4 KiB blocks
//   from the mount's Pool, sparse: a block never written is a hole (reads as zeros,
//   SEEK_HOLE finds it, punch_hole makes one). Either way ENOSPC beyond the limit; statfs
//   reports the pool. Inodes are limited too (`memory.max_inodes`).
// - Permissions: the kernel checks them (memory mounts require default_permissions), with
//   POSIX ACLs (acl.h). Locks: left to the kernel (POSIX locks and flock are not
//   negotiated, so the kernel keeps them locally, exact for a file system on one host).
// - Times: mtime and ctime as natively; atime only when set explicitly (noatime).
//
// Locking: mu_ shared for everything that reads the tree or changes one inode (which also
// takes that inode's own mutex); mu_ exclusive for every change of names (create, link,
// unlink, rename) and anything that changes link counts.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <string_view>

#include "fs/filesystem.h"
#include "fs/handle_table.h"
#include "fs/listing_cache.h"
#include "fs/memory/pool.h"
#include "fs/node_table.h"

namespace efuse::fs::memory {

// The first cookie of a directory entry; 1 and 2 are the offsets after "." and "..".
inline constexpr uint64_t kFirstCookie = 3;

// Directories: ListingChanges keeps the kernel's cached listing exact (memory_dir.cpp).
struct Node : ListingChanges {
  Node(Pool& pool, uint64_t nodeid, mode_t mode);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  Pool& pool;
  const uint64_t nodeid;
  mutable std::shared_mutex mu;  // attributes and data, with MemoryFs::mu_ held shared

  mode_t mode;  // type and permission bits
  uid_t uid = 0;
  gid_t gid = 0;
  nlink_t nlink = 0;
  dev_t rdev = 0;
  uint64_t size = 0;
  uint32_t opens = 0;  // handles the kernel holds open on it (OPEN/CREATE until RELEASE)
  struct timespec atime {}, mtime {}, ctime {};

  // Regular files: block index -> block; missing = hole (without a store).
  std::map<uint64_t, BlockPtr> blocks;
  // Regular files with a store: the data file's descriptor while the kernel has the file
  // open (opens > 0), else -1; opens served through efused (no passthrough), which the
  // kernel does not mix with passthrough opens of the same inode; and whether the kernel
  // refused the data file as a passthrough backing file.
  int fd = -1;
  uint32_t cached_opens = 0;
  bool no_passthrough = false;
  bool passthrough_seen = false;  // it had a passthrough open
  // 512-byte blocks its data file held when it was removed (drop_data), which size, mtime and
  // ctime then keep too: what a descriptor that outlived the names still shows.
  blkcnt_t data_blocks = 0;
  // Symbolic links.
  std::string target;
  // Directories.
  struct Child {
    uint64_t nodeid;
    uint64_t cookie;
  };
  std::map<std::string, Child, std::less<>> names;
  std::map<uint64_t, std::string> by_cookie;
  uint64_t next_cookie = kFirstCookie;
  uint64_t parent = 0;  // nodeid of ".."
  // Extended attributes (ACLs included); charged to the pool in whole blocks.
  std::map<std::string, std::string, std::less<>> xattrs;
  uint64_t xattr_blocks = 0;

  bool is_dir() const { return S_ISDIR(mode); }
  struct stat attributes() const;
};

class MemoryFs final : public Filesystem {
 public:
  // With `store`, file data goes to a private tmpfs when one can be made (store.h), else
  // (and without `store`) to the block pool.
  MemoryFs(const Limits& limits, const Policy& policy, bool store = false);
  ~MemoryFs() override;

  // Locks stay with the kernel; FUSE passthrough is wanted when the data is in a store.
  Capabilities negotiate(const Capabilities& offered) override;
  void init(const Capabilities& granted) override;
  void passthrough_refused(uint64_t ino) override;
  void set_policy(const Policy& policy) override;
  // With an invalidator the kernel caches directory listings (memory_dir.cpp).
  void set_invalidator(Invalidator* inv) override { inv_.store(inv); }
  // How long after a directory's latest change its cached listing settles (kListingGraceNs
  // unless a test sets it).
  void set_listing_grace_ns(int64_t ns) { listing_grace_ns_.store(ns); }
  void set_limits(const Limits& limits);
  std::vector<Metric> metrics() const override;
  const Pool& pool() const { return pool_; }
  // The node table's view (for tests): nodes held, nodes the kernel references.
  size_t nodes() const { return nodes_.size(); }
  size_t referenced() const { return nodes_.referenced(); }

  // libefuse_intercept.so's opens for reading of a file's data file (memory_library.cpp).
  bool library_opens() const override { return pool_.store() != nullptr; }
  uint64_t library_data_dev() const override;
  Result<int> library_open_node(uint64_t nodeid, int flags, const LibraryCaller& caller) override;

  Result<Entry> lookup(const Context&, uint64_t parent, std::string_view name) override;
  void forget(uint64_t ino, uint64_t nlookup) override;
  void set_tier(TierLookups* tier) override { nodes_.set_tier(tier); }
  bool sees_every_change() const override { return true; }  // no other way in
  // Made empty, and nothing can reach it before the kernel learns its nodeid.
  bool new_dir_complete(uint64_t) override { return true; }
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
  Status readdir(const Context&, uint64_t ino, uint64_t fh, uint64_t off, DirSink& sink) override;
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

 private:
  using NodePtr = std::shared_ptr<Node>;

  NodePtr get(uint64_t nodeid) const { return nodes_.get(nodeid); }
  // The directory `nodeid` (ESTALE: gone, ENOTDIR: not a directory), and the node `name`
  // names in it (ENOENT: no such name, EIO: a name whose node is gone); mu_ held.
  Result<NodePtr> dir_of(uint64_t nodeid) const;
  Result<NodePtr> child_of(const Node& dir, std::string_view name) const;
  // The entry reply for `node`, adding one lookup reference.
  Entry entry_of(const Node& node);
  Attr attr_of(const Node& node) const;
  // A new inode in directory `dir` (mu_ held exclusively): checks the name, the inode limit,
  // and applies ownership (set-group-ID directories), umask and default ACLs.
  Result<NodePtr> make_node(const Context& ctx, Node& dir, std::string_view name, mode_t mode);
  // Links `node` into `dir` under `name` (mu_ exclusive); the name must be free.
  void add_name(Node& dir, std::string_view name, Node& node);
  // Removes `name` from `dir` (mu_ exclusive) and drops a link of its node; the node goes
  // when nothing holds it any more.
  void remove_name(Node& dir, std::string_view name, Node& node);
  // For a node with no name left (mu_ exclusive): frees a regular file's blocks at once when
  // no handle is open on it (nothing else can reach its data), and drops the node from the
  // table once the kernel forgot it too.
  void drop_if_unused(Node& node);
  Status check_fh(uint64_t ino, uint64_t fh) const;
  // OPEN and CREATE of `node` (node.mu held exclusively): O_TRUNC, the open count, and
  // whether the kernel does the I/O itself (passthrough) or sends it to efused.
  Result<OpenInfo> open_node(const Context& ctx, Node& node, int flags);
  // A regular file's data is no longer reachable (no name, no open): gone now.
  void drop_data(Node& node);
  // With a store: sets the size of `node`'s data file unless it has it already.
  Status truncate_data(Node& node, uint64_t size);
  // The data file's descriptor for one operation on `node` (node.mu held): its own while
  // open, else a new one that `close_after` says to close.
  Result<int> data_fd(Node& node, bool* close_after);
  // Sets the size of a regular file (node.mu held exclusively): frees blocks past it and
  // zeroes the tail of the last one.
  void truncate(Node& node, uint64_t size);
  // Allocates the blocks of [off, off+len) that are holes (node.mu exclusive); ENOSPC when
  // the pool cannot hold them all, and then none is kept (as tmpfs undoes a failed one).
  Status allocate(Node& node, uint64_t off, uint64_t len);
  void punch(Node& node, uint64_t off, uint64_t len);
  // Stores an xattr value, charging the pool; ENOSPC when it does not fit.
  Status store_xattr(Node& node, std::string_view name, std::string value);
  void erase_xattr(Node& node, std::string_view name);
  void recharge_xattrs(Node& node, uint64_t want_blocks);
  // chmod of a node with an access ACL: the ACL follows the mode.
  void chmod_acl(Node& node);
  // Drops the kernel's cached listing of directory `nodeid` (call without mu_ held).
  void drop_listing(uint64_t nodeid);

  Pool pool_;
  NodeTable<Node> nodes_;
  HandleTable handles_;
  mutable std::shared_mutex mu_;
  std::atomic<uint64_t> next_fh_{1};
  std::atomic<double> entry_timeout_;
  std::atomic<double> attr_timeout_;
  std::atomic<bool> passthrough_io_;       // io_path is not cache
  std::atomic<bool> passthrough_{false};   // the kernel granted passthrough (and a store)
  std::atomic<Invalidator*> inv_{nullptr};
  std::atomic<bool> no_opendir_{false};  // OPENDIR answered ENOSYS: the kernel sends no more
  std::atomic<int64_t> listing_grace_ns_{kListingGraceNs};
  std::atomic<uint64_t> listing_drops_{0};
};

}  // namespace efuse::fs::memory
