// bpf::HandlerSet: the eBPF handlers of bpf/handlers/ loaded for one mount on the kernel
// module tier (efuse.ko, kmod/).
//
// load() opens the shipped objects from a directory (default_handler_dir()), checks their
// map layouts against bpf/handlers/efuse_handler_maps.h, sets each copy's efuse_conn to
// the mount's connection (so it answers that mount's requests only), loads them and
// attaches them: efuse_handler_stats to the module's efuse_handler_done tracepoint and
// efuse_entry_counts to efuse_handler_entry first (they count, answering nothing), then
// the answering handlers (GETATTR, LOOKUP, GETXATTR and LISTXATTR) to efuse_handler. Each mount has
// copies and maps of its own. Destroying the set detaches everything and frees the maps
// (nothing is pinned), and so does the death of efused: a killed efused leaves no handler
// behind, and the module answers its dead connection's requests with ENOTCONN.
#pragma once

#include <cstdint>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "efuse_handler_maps.h"

struct bpf_object;
struct bpf_link;

namespace efuse::bpf {

// enum efuse_handler_stat's names, in its order: /sys/fs/efuse/handler/<name>, and the
// `reason` label of efuse_kernel_handler_fallbacks_total (all but "answered").
inline constexpr const char* kHandlerStatNames[] = {
    "answered", "declined", "no_memory", "disconnected", "bad_verdict",
    "bad_nodeid", "bad_error", "bad_size", "bad_opcode", "bad_reply"};
static_assert(std::size(kHandlerStatNames) == EFUSE_HANDLER_NR_STATS,
              "kHandlerStatNames follows enum efuse_handler_stat");

// The shipped handler objects, in attach order.
inline constexpr const char* kHandlerObjects[] = {"efuse_handler_stats", "efuse_entry_counts",
                                                  "efuse_getattr", "efuse_lookup", "efuse_xattr"};

// Where the shipped handlers are: $EFUSE_HANDLER_DIR when set; else bpf/handlers/ of the
// build tree when efused runs from one (build/bin/efused); else the installed
// /usr/lib/efuse/handlers (EFUSE_INSTALLED_HANDLER_DIR).
std::string default_handler_dir();

class HandlerSet {
 public:
  // Null, with *error saying why, when an object is missing or the kernel refuses it.
  static std::unique_ptr<HandlerSet> load(const std::string& dir, uint32_t conn,
                                          std::string* error);
  ~HandlerSet();
  HandlerSet(const HandlerSet&) = delete;
  HandlerSet& operator=(const HandlerSet&) = delete;

  // The answer maps (efuse_getattr_answers, efuse_lookup_answers). false: not stored.
  bool put_attr(uint64_t nodeid, const efuse_handler_entry& entry);
  void drop_attr(uint64_t nodeid);
  bool put_name(const efuse_handler_name_key& key, const efuse_handler_entry& entry);
  void drop_name(const efuse_handler_name_key& key);
  // efuse_entry_lookups: lookups the kernel took from positive LOOKUP answers for `nodeid`
  // (0 when it has no counter); the counter's removal. Key 0: lookups not counted.
  uint64_t entry_lookups(uint64_t nodeid) const;
  // efuse_xattr_answers: (nodeid, name; "" for the list). false: not stored.
  bool put_xattr(const efuse_handler_name_key& key, const efuse_handler_entry& entry);
  void drop_xattr(const efuse_handler_name_key& key);
  void drop_entry_lookups(uint64_t nodeid);

  // efuse_handler_outcomes summed over CPUs: EFUSE_HANDLER_OUTCOME_SLOTS counters, at
  // opcode * EFUSE_HANDLER_NR_STATS + stat. Empty if the map cannot be read.
  std::vector<uint64_t> outcomes() const;

  uint32_t conn() const { return conn_; }
  const std::string& dir() const { return dir_; }
  // Kernel program ids, in kHandlerObjects order.
  std::vector<uint32_t> program_ids() const;

 private:
  HandlerSet() = default;
  struct Object {
    bpf_object* obj = nullptr;
    std::vector<bpf_link*> links;
  };
  std::vector<Object> objects_;  // kHandlerObjects order; destroyed in reverse
  uint32_t conn_ = 0;
  std::string dir_;
  int attr_fd_ = -1;
  int name_fd_ = -1;
  int outcomes_fd_ = -1;
  int entry_fd_ = -1;
  int xattr_fd_ = -1;
};

}  // namespace efuse::bpf
