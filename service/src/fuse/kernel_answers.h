// KernelAnswers: the answers efuse.ko's eBPF handlers give without asking efused (the
// kernel-module tier, kmod/ and bpf/handlers/), and how the session keeps them exact.
//
// The handlers answer GETATTR from a map keyed by nodeid and LOOKUPs from a map keyed by
// (parent nodeid, name): negative ones, and positive ones for a node the kernel holds
// already (module patch 0008). Only answers efused itself sent go into them: the session
// hands over the reply bytes of every GETATTR and LOOKUP it answers (store_*), and the
// entries of every READDIRPLUS reply (as positive LOOKUP answers). Where the backend sees
// every change (set_exact: the memory backend, a passthrough mount whose watcher watches
// every directory the kernel knows) a stored answer is kept beyond the validity it gave the
// kernel, until a change drops it: when the kernel's cache expires, the revalidating LOOKUP
// or GETATTR is answered by the handler (the kernel caches it again for the validity the
// answer carries). Elsewhere each is used until that validity (attr_valid, entry_valid; for
// an entry the shorter of the two) runs out, so the cache timeouts still bound what no
// watcher sees; and when a backend stops seeing every change (a directory it could not
// watch), everything stored goes. A reply valid for no time (timeout 0, an ENOENT error)
// is never stored. Every change made through the mount drops the entries it may make wrong
// before its reply is sent, and the mount's watcher drops them for outside changes before
// it invalidates the kernel's caches (the *_changed calls):
//
//   attributes of N   SETATTR, WRITE, FALLOCATE, COPY_FILE_RANGE (target), SETXATTR,
//                     REMOVEXATTR, an open with O_TRUNC, LINK (its nlink), and while N is
//                     open for writing nothing is stored for it at all (FUSE passthrough
//                     writes reach the backing file without a request); a positive entry
//                     for N carries N's attributes and goes with them
//   name P/X          CREATE, MKNOD, MKDIR, SYMLINK, LINK, RENAME of or onto it, UNLINK,
//                     RMDIR: drops the stored answer for the name, the attributes of P
//                     (mtime, nlink) and those of the node the name led to (nlink, ctime);
//                     when it succeeded, the session then stores P's attributes as read
//                     after the change (Session::restore_dir_attr: the kernel marks them
//                     stale at the reply and asks for them at the next path walk through
//                     P, one GETATTR per entry a tar extracts), under the same rule as a
//                     GETATTR reply: a drop after its begin() skips it
//
// STATFS replies go into efuse_statfs_answers, each for cache.statfs_timeout (default 1 s)
// from the moment it was read and no longer, whatever the backend sees: the statistics of
// the file system under a mount change with every write, through the mount or not, and no
// watcher reports them. The handler never answers efused's own requests (its health probe).
//
// ACCESS replies (kmod patch 0017; the kernel sends ACCESS only to mounts without
// default_permissions) go into efuse_access_answers, keyed by nodeid, a slot per (uid, gid,
// mask) of the callers efused answered (EFUSE_ACCESS_SLOTS per node; the first to expire
// gives way): efused asks the backing file system with the caller's fsuid and fsgid and its
// own supplementary groups, which never change, so the answer depends on nothing else but
// the node. Grants, EACCES, EROFS and EPERM are stored, each for the attribute validity
// efused last sent and never beyond, exact backend or not (a backing file system remounted
// read-only is a change no watcher reports), under the same rule as a GETATTR reply; they
// go with the node's attributes (chmod, chown, ACLs: SETXATTR, outside changes).
//
// GETXATTR and LISTXATTR replies go into a third map keyed by (nodeid, name; "" for the
// list): an ENODATA, or a value (list) of at most EFUSE_HANDLER_DATA_MAX bytes read with a
// buffer. The kernel caches no extended attribute and a reply carries no validity: a stored
// one is used for the attribute validity efused last sent (attr_valid; beyond it on an
// exact backend, as above), and names under
// "trusted." are not stored (efused reads them with the caller's credentials, so their
// answer depends on the caller). A value goes with the node's attributes (a write or chown
// may remove security.capability, and chmod rewrites an ACL); an absence only with
// SETXATTR, REMOVEXATTR and outside changes (xattrs_changed), the only ways a name can
// appear, so a file open for writing keeps its stored absences: the kernel asks for
// security.capability before every write, and the answer stays "none" however it is
// written. A node created through the mount (CREATE, MKNOD, MKDIR, SYMLINK) has no
// security.capability (nothing sets one at creation): its absence is stored before the
// creating reply is sent (node_created), once the mount has shown that it has extended
// attributes at all (an ENODATA or a value was replied; a backing file system without
// them answers EOPNOTSUPP, which is the server's to give), so the GETXATTR of the first
// write is answered in the kernel.
//
// The node a name leads to comes from an index of the entries efused sent (LOOKUP, the
// entry-creating operations, READDIRPLUS), as the kernel can only name nodes it got that
// way. A GETATTR or LOOKUP computed before a change and answered after it must not store
// what it read: begin() returns a sequence number taken before the backend is asked, every
// drop stamps its key's bucket with a newer one, and a store whose bucket is newer than its
// begin() is skipped. Buckets are hashed, so a collision skips a store: never a wrong entry.
//
// READ replies fill the block cache the READ handler answers from (efuse_read_blocks,
// efuse_handler_maps.h: an array mapped into efused, EFUSE_READ_WAYS slots per set, a slot
// chosen empty or least recently used). Small files only: the blocks a reply covers whole
// go in when its data lies in a file's first EFUSE_HANDLER_READ_MAX bytes and the reply
// either showed where the file ends (a short read: its last block is stored as the end of
// the file) or answered a request that stayed within those bytes. All blocks of one version
// of a file carry one generation, and a handler never mixes generations. A version is the
// file's size and mtime, taken before its bytes are read: attributes efused later sends with
// another size or mtime drop the blocks, as the kernel drops its pages when it notices
// (FUSE_AUTO_INVAL_DATA), which bounds changes the watcher cannot see. The blocks of a
// node go (generation zeroed in place, before the reply of the change is sent) with its
// attributes: every change of its data (WRITE, truncating SETATTR or open, FALLOCATE,
// COPY_FILE_RANGE onto it, passthrough writable opens and their release) or any other
// change of the node, through the mount or seen by the watcher, and its FORGET; nothing is
// stored while it is open for writing, nor from a READ that raced a change.
//
// OPEN and FLUSH answers (module patch 0012) go into two maps keyed by nodeid. An OPEN reply
// efused sent for a read-only open without O_TRUNC of a file in passthrough mode is stored
// as the node's open answer: fh 0, FOPEN_PASSTHROUGH and the backing id, which the session
// keeps registered (with a handle of its own on the node) until the node is dropped
// (Session::hold_for_kernel_opens), so no id a handler can hand out is ever closed, and the
// kernel's passthrough state of the inode never meets a second id. The open answer needs no
// expiry (the kernel checks the caller's access itself, default_permissions) and goes with
// the node's attributes all the same (chmod, chown, writes, renames, unlinks, outside
// changes). With it a FLUSH answer is stored unless a lock was ever asked for on the node
// (lock_asked: efused releases POSIX locks and marks flocks at FLUSH), until the node is
// dropped; it goes at every FORGET.
//
// Negative LOOKUPs of new names (efuse_complete_dirs, efuse_dir_names; efuse_handler_maps.h).
// The kernel looks up every name before it creates it, and no stored answer exists for a
// name nobody asked for. A directory efused made itself (MKDIR, empty) while it sees every
// change (set_exact) and that the backend watches from before it was found empty
// (Filesystem::new_dir_complete) is marked complete: efused knows its every name, in an
// existence index kept for it alone (positive answers are not stored for every name: not
// for files open for writing), and the LOOKUP handler answers any other name of it
// negative, with the answer efused would send (dir_complete). The index is a superset of
// the directory's names at every moment, which is all exactness needs (a name in it that
// is not there only sends its LOOKUP up):
//
//   a name goes in   before the operation that may make it is carried out (name_adding:
//                    CREATE, MKNOD, MKDIR, SYMLINK, LINK, the target of RENAME and both
//                    names of RENAME_EXCHANGE), so a LOOKUP racing the operation goes up
//   a name goes out  after UNLINK, RMDIR or RENAME (not RENAME_EXCHANGE or RENAME_WHITEOUT)
//                    removed it (name_gone)
//   the mark goes    first, before its names: when a name cannot be put in (a full map), a
//                    creating operation failed (efused cannot tell whether the backend made
//                    the name before failing: names_unknown), the watcher saw an outside
//                    change of a name in it or of the directory itself (inotify overflow
//                    included: it reports every node), the directory's FORGET, the
//                    backend stopping to see every change, drop_all
//
// The maps belong to this efused (nothing is pinned): a restart remounts the module tier's
// mounts, and the next efused starts with no directory complete.
//
// Lookup counts (fs::TierLookups, the contract in fs/node_table.h): every positive entry
// the module takes from a handler adds one lookup the backend's node table never saw. The
// module reports each one (tracepoint efuse_handler_entry, fired while it holds the inode)
// and the handlers' counting program adds it to a per-nodeid counter (AnswerStore::
// entry_lookups, monotonic); take() hands the node table what was added since it last
// asked, before it applies a FORGET, and withdraw() forgets a dropped node's counter. The
// module takes positive entries only for inodes it holds with lookups of their own, so no
// answer can count for a node after the FORGET that dropped it, and nodeids are never
// reused.
//
// Thread-safe: workers of all channels call it concurrently.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "efuse_handler_maps.h"
#include "fs/node_table.h"

namespace fuse {

// A file's size and modification time (ns), as efused's replies report them: a version of
// its bytes for the READ block cache.
struct FileStamp {
  uint64_t size = 0;
  uint64_t mtime_ns = 0;
  bool operator==(const FileStamp&) const = default;
};

// Where the answers live: the handlers' BPF maps (bpf::HandlerSet). Writes may fail (a full
// map): then the answer is simply not stored.
class AnswerStore {
 public:
  virtual ~AnswerStore() = default;
  virtual bool put_attr(uint64_t nodeid, const efuse_handler_entry& entry) = 0;
  // Whether put_attr can store anything (a GETATTR handler with its map is loaded).
  virtual bool keeps_attrs() const { return true; }
  // Delivers every RELEASE the RELEASE handler took over and queued so far (efuse_releases)
  // to the session before it returns.
  virtual void drain_releases() {}
  virtual void drop_attr(uint64_t nodeid) = 0;
  virtual bool put_name(const efuse_handler_name_key& key, const efuse_handler_entry& entry) = 0;
  virtual void drop_name(const efuse_handler_name_key& key) = 0;
  // efuse_entry_lookups: the lookups the kernel took from positive LOOKUP answers for
  // `nodeid`, counted since its counter was created (0 when there is none).
  virtual uint64_t entry_lookups(uint64_t nodeid) = 0;
  virtual void drop_entry_lookups(uint64_t nodeid) = 0;
  // efuse_xattr_answers: (nodeid, attribute name; "" for the list).
  virtual bool put_xattr(const efuse_handler_name_key& key, const efuse_handler_entry& entry) = 0;
  virtual void drop_xattr(const efuse_handler_name_key& key) = 0;
  // efuse_open_answers and efuse_flush_answers: key nodeid.
  // efuse_complete_dirs: the answer to a LOOKUP of a name a complete directory lacks.
  // efuse_statfs_answers: a STATFS reply, with the expiry statfs_timeout gives it.
  // efuse_access_answers: ACCESS replies, a struct efuse_access_slot each.
  enum class NodeMap { Open, Flush, Complete, Statfs, Access };
  virtual bool put_node(NodeMap map, uint64_t nodeid, const efuse_handler_entry& entry) = 0;
  virtual void drop_node(NodeMap map, uint64_t nodeid) = 0;
  // efuse_dir_names: the names of the complete directories.
  virtual bool put_dir_name(const efuse_handler_name_key& key) = 0;
  virtual void drop_dir_name(const efuse_handler_name_key& key) = 0;
  // efuse_read_blocks, mapped: EFUSE_READ_WAYS * sets blocks, written in place under the
  // protocol of efuse_handler_maps.h. Empty when the mount has no block cache.
  virtual std::span<efuse_read_block> read_blocks() { return {}; }
};

struct KernelAnswerStats {
  uint64_t attr_entries = 0;    // GETATTR answers stored
  uint64_t name_entries = 0;    // LOOKUP answers stored (negative and positive)
  uint64_t positive_entries = 0;  // of which positive
  uint64_t xattr_entries = 0;   // GETXATTR and LISTXATTR answers stored
  uint64_t open_entries = 0;    // OPEN answers stored
  uint64_t flush_entries = 0;   // FLUSH answers stored
  uint64_t statfs_entries = 0;  // STATFS answers stored (expired ones included)
  uint64_t access_entries = 0;  // nodes with ACCESS answers stored (expired ones included)
  uint64_t complete_dirs = 0;   // directories whose every name efused knows (efuse_complete_dirs)
  uint64_t dir_names = 0;       // their names (efuse_dir_names)
  uint64_t tier_nodes = 0;      // nodes with a lookup counter (efuse_entry_lookups)
  uint64_t tier_lookups = 0;    // lookups taken from positive answers, folded into FORGETs
  uint64_t read_blocks = 0;     // READ blocks stored (efuse_read_blocks)
  uint64_t read_capacity = 0;   // blocks the cache holds at most
  uint64_t read_evictions = 0;  // blocks replaced by another one of their set (LRU)
  uint64_t stores_skipped = 0;  // answers not stored: a change raced them, or the map was full
  uint64_t drops = 0;           // entries dropped because something changed
  // RELEASEs the RELEASE handler took over that efused carried out (Session::kernel_releases;
  // filled in by the mount, not by KernelAnswers).
  uint64_t kernel_releases = 0;
};

// Bytes of one stored entry, key and value, per map (efuse_kernel_map_bytes).
inline constexpr uint64_t kAttrEntryBytes = sizeof(uint64_t) + sizeof(efuse_handler_entry);
inline constexpr uint64_t kNameEntryBytes =
    sizeof(efuse_handler_name_key) + sizeof(efuse_handler_entry);
inline constexpr uint64_t kEntryCounterBytes = 2 * sizeof(uint64_t);  // nodeid -> count
inline constexpr uint64_t kCompleteDirBytes = sizeof(uint64_t) + sizeof(efuse_handler_entry);
inline constexpr uint64_t kDirNameBytes = sizeof(efuse_handler_name_key) + sizeof(uint32_t);
// The largest nodeid-keyed maps, efuse_open_answers and efuse_flush_answers, hold at most this.
inline constexpr size_t kMaxOpenAnswers = EFUSE_OPEN_ANSWERS;
inline constexpr size_t kMaxStatfsAnswers = EFUSE_STATFS_ANSWERS;
inline constexpr size_t kMaxAccessAnswers = EFUSE_ACCESS_ANSWERS;
inline constexpr uint64_t kReadBlockBytes = sizeof(efuse_read_block);

class KernelAnswers final : public efuse::fs::TierLookups {
 public:
  // Nodes with a lookup counter at most (efuse_entry_counts.bpf.c holds more, and key 0).
  static constexpr size_t kMaxTierNodes = 200000;
  // Complete directories and their names at most (efuse_handler_maps.h).
  static constexpr size_t kMaxCompleteDirs = EFUSE_COMPLETE_DIRS;
  static constexpr size_t kMaxDirNames = EFUSE_DIR_NAMES;

  explicit KernelAnswers(AnswerStore& store, size_t max_tier_nodes = kMaxTierNodes);
  KernelAnswers(const KernelAnswers&) = delete;
  KernelAnswers& operator=(const KernelAnswers&) = delete;

  // Taken before the backend is asked for a GETATTR or LOOKUP answer.
  uint64_t begin();
  // Whether GETATTR answers are stored at all (AnswerStore::keeps_attrs).
  bool keeps_attrs() const { return store_.keeps_attrs(); }
  // AnswerStore::drain_releases: called before a FORGET is applied, with no lock held.
  void drain_releases() { store_.drain_releases(); }

  // Answers efused sent. `reply` is the reply body (fuse_attr_out, fuse_entry_out).
  void store_attr(uint64_t nodeid, std::span<const char> reply, uint64_t since);
  // A LOOKUP reply: a negative entry (nodeid 0, entry_valid > 0) is stored; a positive one
  // goes into the name index, and is stored when it is valid for some time, the node is
  // not open for writing and not the root, and nothing changed the name or the node since
  // `since`.
  void store_lookup(uint64_t parent, std::string_view name, int error,
                    std::span<const char> reply, uint64_t since);
  // A GETXATTR (`name`) or LISTXATTR (empty `name`) reply to a request for `size` bytes:
  // an ENODATA error, or the value (list) read with a buffer, is stored.
  void store_xattr(uint64_t nodeid, std::string_view name, int error, uint32_t size,
                   std::span<const char> reply, uint64_t since);
  // Whether READ replies of `offset` may be stored: there is a block cache, and the offset
  // is in the part of a file it keeps. The session then takes the file's stamp before its
  // bytes are read.
  bool keeps_read(uint64_t offset) const {
    return !pool_.empty() && offset < EFUSE_HANDLER_READ_MAX;
  }
  // A READ reply: `data` answered a request for `size` bytes at `offset` of `nodeid`, whose
  // size and mtime were `stamp` before the bytes were read.
  void store_read(uint64_t nodeid, uint64_t offset, uint32_t size, std::span<const char> data,
                  const FileStamp& stamp, uint64_t since);
  // The attribute validity of a reply efused sent (attr_valid, attr_valid_nsec): how long
  // stored extended attributes are used.
  void attr_validity(uint64_t sec, uint32_t nsec);
  // An entry efused sent for a name (creating operations, READDIRPLUS): the name index.
  void entry_sent(uint64_t parent, std::string_view name, uint64_t nodeid);
  // A node efused created (CREATE, MKNOD, MKDIR, SYMLINK; not LINK, whose node is an old
  // one): the absence of its security.capability, unless a change raced it (`since`).
  void node_created(uint64_t nodeid, uint64_t since);
  // MKDIR made `dir`, and the backend says it held no entry after its watch was in place
  // (Filesystem::new_dir_complete): the directory is complete, and a name it lacks is
  // answered with an entry of nodeid 0 valid for `negative_timeout` seconds, or -ENOENT when
  // that is 0, as efused answers. Only while the backend sees every change, and unless a
  // change of `dir` raced it (`since`).
  void dir_complete(uint64_t dir, double negative_timeout, uint64_t since);
  // Before an operation that may make the name `parent`/`name`: its stored answer goes,
  // and it goes into the index of a complete `parent` (or the mark goes, when the map is
  // full).
  void name_adding(uint64_t parent, std::string_view name);
  // After an operation removed the name: it leaves the index.
  void name_gone(uint64_t parent, std::string_view name);
  // efused cannot tell which names `dir` holds (an operation that may have made one
  // failed): it is not complete any more.
  void names_unknown(uint64_t dir);
  // Whether the backend sees every change of what it serves (changes through the mount,
  // and outside ones through a watcher that watches every directory the kernel knows):
  // then answers are kept beyond the validity they gave the kernel. Asked at every store;
  // the first time it turns false, everything stored goes (drop_all). Unset: never.
  void set_exact(std::function<bool()> exact);
  // An OPEN reply for a read-only open of `nodeid` in passthrough mode with `backing_id`,
  // which the session holds registered until the node is dropped: the open answer, and the
  // FLUSH answer unless a lock was asked for on the node. False when not stored (a full map).
  bool store_open(uint64_t nodeid, int32_t backing_id);
  // An OPEN or CREATE reply of `nodeid` in passthrough mode (any access mode): the FLUSH
  // answer, unless a lock was asked for on the node. The module takes it for a server's open
  // only when the open is in passthrough mode and its backing file has no flush method (kmod
  // patch 0013): efused's FLUSH then has nothing to do but drop locks.
  void store_flush(uint64_t nodeid);
  // Whether OPEN answers are stored at all: only on a mount with default_permissions (the
  // module refuses them elsewhere, as efused then checks access itself). Default: yes.
  void allow_opens(bool allowed) { opens_allowed_.store(allowed, std::memory_order_relaxed); }
  bool opens_allowed() const { return opens_allowed_.load(std::memory_order_relaxed); }
  // A STATFS reply for `nodeid`, answered in the kernel for `timeout` seconds from now
  // (cache.statfs_timeout; nothing when that is 0). Never kept longer, also on an exact
  // backend: no watcher reports a change of a file system's statistics.
  void store_statfs(uint64_t nodeid, std::span<const char> reply, double timeout);
  // An ACCESS reply efused sent to `uid`/`gid` for `mask` on `nodeid`: `error` 0, EACCES,
  // EROFS or EPERM is stored (a slot of the node's entry), for the attribute validity
  // efused last sent, unless a change of the node raced it (`since`).
  void store_access(uint64_t nodeid, uint32_t uid, uint32_t gid, uint32_t mask, int error,
                    uint64_t since);
  // A GETLK, SETLK or SETLKW (POSIX or flock) on `nodeid`: FLUSH of the node goes up from
  // now on, until the node is dropped (withdraw).
  void lock_asked(uint64_t nodeid);

  // Changes (see the table above). `done` says whether the operation succeeded: the index
  // follows only changes that happened; entries are dropped either way.
  void attr_changed(uint64_t nodeid);
  // SETXATTR, REMOVEXATTR, or an outside change of the node (the watcher cannot tell an
  // attribute change from an extended one): the attributes and every stored xattr answer.
  void xattrs_changed(uint64_t nodeid);
  void name_created(uint64_t parent, std::string_view name);
  void name_removed(uint64_t parent, std::string_view name, bool done);
  void name_moved(uint64_t from_parent, std::string_view from, uint64_t to_parent,
                  std::string_view to, bool exchange, bool done);
  // An outside change of a name the watcher saw: whatever it was, the kernel forgets the
  // name, and so does everything here.
  void name_changed_outside(uint64_t parent, std::string_view name);
  // An outside change of the node itself the watcher saw (attributes, data, extended
  // attributes; an overflowed event queue reports every node): xattrs_changed, and a
  // directory is not complete any more (its names may have changed unseen).
  void node_changed_outside(uint64_t nodeid);
  // The kernel drops the node's pages (an open without FOPEN_KEEP_CACHE): its READ blocks go.
  void pages_dropped(uint64_t nodeid);
  // Opens and releases for writing (O_WRONLY, O_RDWR).
  void write_opened(uint64_t nodeid);
  void write_released(uint64_t nodeid);
  // The kernel forgot the node: its attributes, and the names under it, go.
  void forgotten(uint64_t nodeid);
  // Everything goes (the mount's cache timeouts changed: stored replies carry the old ones).
  void drop_all();

  // fs::TierLookups: lookups of `nodeid` the kernel took from positive answers since the
  // last take; and the node's withdrawal (its answers and its counter go).
  uint64_t take(uint64_t nodeid) override;
  void withdraw(uint64_t nodeid) override;

  KernelAnswerStats stats() const;

 private:
  static constexpr size_t kBuckets = 4096;
  using Name = std::pair<uint64_t, std::string>;

  void drop_attr_locked(uint64_t nodeid);
  void drop_name_locked(uint64_t parent, std::string_view name);
  void drop_name_locked(std::map<Name, uint64_t>::iterator it);
  void unlink_pointing_locked(std::map<Name, uint64_t>::iterator it);
  void drop_pointing_locked(uint64_t nodeid);  // positive answers naming `nodeid`
  void drop_node_locked(uint64_t nodeid);      // attributes, answers naming it, names under it
  void drop_xattrs_locked(uint64_t nodeid, bool absences_too);
  // An xattr answer for (nodeid, name; "" for the list), kept for the attribute validity
  // efused last sent (hold()), unless a change raced it or it is a value of a node open
  // for writing. Called without mu_ held.
  void put_xattr_answer(uint64_t nodeid, std::string_view name, efuse_handler_entry& e,
                        uint64_t since);
  void drop_flush_locked(uint64_t nodeid);
  void drop_complete_locked(uint64_t dir);  // the mark first, then the names
  void store_flush_locked(uint64_t nodeid);
  uint64_t child_locked(uint64_t parent, std::string_view name) const;  // 0: not known
  void drop_blocks_locked(uint64_t nodeid);  // the node's READ blocks
  // Attributes efused sent for the node (GETATTR, LOOKUP): a size or mtime other than its
  // blocks' drops them, as the kernel drops its pages then (FUSE_AUTO_INVAL_DATA).
  void stamp_seen_locked(uint64_t nodeid, const FileStamp& stamp);
  void put_block_locked(uint64_t nodeid, uint64_t index, uint64_t gen,
                        std::span<const char> bytes, bool eof);
  // How long an answer valid for `sec` + `nsec` is used (efuse_handler_entry.expires): 0
  // (not stored) for no time; UINT64_MAX (until dropped) on an exact backend. Called
  // without mu_ held: it may drop everything when the backend stopped being exact.
  uint64_t hold(uint64_t sec, uint32_t nsec);
  static size_t attr_bucket(uint64_t nodeid);
  static size_t name_bucket(uint64_t parent, std::string_view name);

  AnswerStore& store_;
  const size_t max_tier_nodes_;
  mutable std::mutex mu_;
  uint64_t seq_ = 0;
  std::array<uint64_t, kBuckets> attr_stamp_{};
  std::array<uint64_t, kBuckets> name_stamp_{};
  std::unordered_set<uint64_t> attrs_;              // nodeids with a stored GETATTR answer
  std::map<Name, uint64_t> names_;                  // names with a stored answer -> its nodeid (0: absent)
  std::map<uint64_t, std::set<Name>> pointing_;     // nodeid -> names with a positive answer for it
  std::unordered_map<uint64_t, uint64_t> taken_;    // nodes with a lookup counter -> lookups taken
  std::map<Name, bool> xattrs_;                     // stored xattr answers -> a value (not ENODATA)
  std::unordered_set<uint64_t> opens_;              // nodeids with a stored OPEN answer
  std::unordered_set<uint64_t> flushes_;            // nodeids with a stored FLUSH answer
  std::unordered_set<uint64_t> statfs_;             // nodeids with a stored STATFS answer
  // nodeids with stored ACCESS answers -> their slots, as in the map
  std::unordered_map<uint64_t, std::vector<efuse_access_slot>> access_;
  std::unordered_set<uint64_t> locked_;             // nodeids a lock was asked for
  // Complete directories -> their names (efuse_complete_dirs, efuse_dir_names).
  std::unordered_map<uint64_t, std::set<std::string, std::less<>>> complete_;
  uint64_t dir_names_ = 0;
  std::atomic<uint64_t> attr_valid_ns_{0};          // validity of the last attributes sent
  std::atomic<bool> opens_allowed_{true};
  std::function<bool()> exact_;                     // set_exact; empty: never exact
  std::atomic<bool> was_exact_{false};              // what exact_ said last
  std::atomic<bool> xattrs_seen_{false};            // an ENODATA or a value was replied
  uint64_t tier_lookups_ = 0;
  std::map<Name, uint64_t> index_;                  // names -> the nodeid efused sent for it
  std::unordered_map<uint64_t, uint32_t> writers_;  // nodeid -> opens for writing
  uint64_t stores_skipped_ = 0;
  uint64_t drops_ = 0;
  // The READ block cache: the mapped slots, what efused put in each (nodeid 0: empty), and
  // per node its generation and slots.
  struct Slot {
    uint64_t nodeid = 0;
    uint64_t index = 0;
  };
  struct File {
    uint64_t gen = 0;
    FileStamp stamp;  // the version its blocks are of
    std::vector<uint32_t> slots;
  };
  std::span<efuse_read_block> pool_;
  uint32_t sets_ = 0;
  std::vector<Slot> slots_;
  std::unordered_map<uint64_t, File> files_;
  uint64_t next_gen_ = 0;
  uint64_t read_blocks_ = 0;
  uint64_t read_evictions_ = 0;
};

}  // namespace fuse
