// KernelAnswers: the answers efuse.ko's eBPF handlers give without asking efused (the
// kernel-module tier, kmod/ and bpf/handlers/), and how the session keeps them exact.
//
// The handlers answer GETATTR from a map keyed by nodeid and negative LOOKUPs from a map
// keyed by (parent nodeid, name). Only answers efused itself sent go into them: the
// session hands over the reply bytes of every GETATTR and negative LOOKUP it answers
// (store_*), and each is used until the validity it gave the kernel (attr_valid,
// entry_valid) runs out, so the cache timeouts still bound what the watcher cannot see; a
// reply valid for no time (timeout 0, an ENOENT error) is not stored. Every change made through the mount drops the entries it may make wrong before
// its reply is sent, and the mount's watcher drops them for outside changes before it
// invalidates the kernel's caches (the *_changed calls):
//
//   attributes of N   SETATTR, WRITE, FALLOCATE, COPY_FILE_RANGE (target), SETXATTR,
//                     REMOVEXATTR, an open with O_TRUNC, LINK (its nlink), and while N is
//                     open for writing nothing is stored for it at all (FUSE passthrough
//                     writes reach the backing file without a request)
//   name P/X          CREATE, MKNOD, MKDIR, SYMLINK, LINK, RENAME of or onto it, UNLINK,
//                     RMDIR: drops the negative entry, the attributes of P (mtime, nlink)
//                     and those of the node the name led to (nlink, ctime)
//
// The node a name leads to comes from an index of the entries efused sent (LOOKUP, the
// entry-creating operations, READDIRPLUS), as the kernel can only name nodes it got that
// way. A GETATTR or LOOKUP computed before a change and answered after it must not store
// what it read: begin() returns a sequence number taken before the backend is asked, every
// drop stamps its key's bucket with a newer one, and a store whose bucket is newer than its
// begin() is skipped. Buckets are hashed, so a collision skips a store: never a wrong entry.
//
// Thread-safe: workers of all channels call it concurrently.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "efuse_handler_maps.h"

namespace fuse {

// Where the answers live: the handlers' BPF maps (bpf::HandlerSet). Writes may fail (a full
// map): then the answer is simply not stored.
class AnswerStore {
 public:
  virtual ~AnswerStore() = default;
  virtual bool put_attr(uint64_t nodeid, const efuse_handler_entry& entry) = 0;
  virtual void drop_attr(uint64_t nodeid) = 0;
  virtual bool put_name(const efuse_handler_name_key& key, const efuse_handler_entry& entry) = 0;
  virtual void drop_name(const efuse_handler_name_key& key) = 0;
};

struct KernelAnswerStats {
  uint64_t attr_entries = 0;    // GETATTR answers stored
  uint64_t name_entries = 0;    // negative LOOKUP answers stored
  uint64_t stores_skipped = 0;  // answers not stored: a change raced them, or the map was full
  uint64_t drops = 0;           // entries dropped because something changed
};

// Bytes of one stored entry, key and value, per map (efuse_kernel_map_bytes).
inline constexpr uint64_t kAttrEntryBytes = sizeof(uint64_t) + sizeof(efuse_handler_entry);
inline constexpr uint64_t kNameEntryBytes =
    sizeof(efuse_handler_name_key) + sizeof(efuse_handler_entry);

class KernelAnswers {
 public:
  explicit KernelAnswers(AnswerStore& store) : store_(store) {}
  KernelAnswers(const KernelAnswers&) = delete;
  KernelAnswers& operator=(const KernelAnswers&) = delete;

  // Taken before the backend is asked for a GETATTR or LOOKUP answer.
  uint64_t begin();

  // Answers efused sent. `reply` is the reply body (fuse_attr_out, fuse_entry_out).
  void store_attr(uint64_t nodeid, std::span<const char> reply, uint64_t since);
  // A LOOKUP reply: a negative entry (nodeid 0, entry_valid > 0) is stored; a positive one
  // only goes into the name index.
  void store_lookup(uint64_t parent, std::string_view name, int error,
                    std::span<const char> reply, uint64_t since);
  // An entry efused sent for a name (creating operations, READDIRPLUS): the name index.
  void entry_sent(uint64_t parent, std::string_view name, uint64_t nodeid);

  // Changes (see the table above). `done` says whether the operation succeeded: the index
  // follows only changes that happened; entries are dropped either way.
  void attr_changed(uint64_t nodeid);
  void name_created(uint64_t parent, std::string_view name);
  void name_removed(uint64_t parent, std::string_view name, bool done);
  void name_moved(uint64_t from_parent, std::string_view from, uint64_t to_parent,
                  std::string_view to, bool exchange, bool done);
  // An outside change of a name the watcher saw: whatever it was, the kernel forgets the
  // name, and so does everything here.
  void name_changed_outside(uint64_t parent, std::string_view name);
  // Opens and releases for writing (O_WRONLY, O_RDWR).
  void write_opened(uint64_t nodeid);
  void write_released(uint64_t nodeid);
  // The kernel forgot the node: its attributes, and the names under it, go.
  void forgotten(uint64_t nodeid);
  // Everything goes (the mount's cache timeouts changed: stored replies carry the old ones).
  void drop_all();

  KernelAnswerStats stats() const;

 private:
  static constexpr size_t kBuckets = 4096;
  using Name = std::pair<uint64_t, std::string>;

  void drop_attr_locked(uint64_t nodeid);
  void drop_name_locked(uint64_t parent, std::string_view name);
  uint64_t child_locked(uint64_t parent, std::string_view name) const;  // 0: not known
  static size_t attr_bucket(uint64_t nodeid);
  static size_t name_bucket(uint64_t parent, std::string_view name);

  AnswerStore& store_;
  mutable std::mutex mu_;
  uint64_t seq_ = 0;
  std::array<uint64_t, kBuckets> attr_stamp_{};
  std::array<uint64_t, kBuckets> name_stamp_{};
  std::unordered_set<uint64_t> attrs_;              // nodeids with a stored GETATTR answer
  std::set<Name> negatives_;                        // names with a stored negative answer
  std::map<Name, uint64_t> index_;                  // names -> the nodeid efused sent for it
  std::unordered_map<uint64_t, uint32_t> writers_;  // nodeid -> opens for writing
  uint64_t stores_skipped_ = 0;
  uint64_t drops_ = 0;
};

}  // namespace fuse
