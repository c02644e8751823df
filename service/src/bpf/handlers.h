// bpf::HandlerSet: the eBPF handlers of one mount on the kernel module tier (efuse.ko, kmod/),
// by opcode, replaceable while the mount serves (issue 20, docs/bpf.md "Handler hot swap").
//
// load() loads the counting programs (efuse_handler_stats on the module's efuse_handler_done
// tracepoint: each request's outcome; efuse_entry_counts on efuse_handler_entry: the lookups
// the kernel took from positive LOOKUP answers, which efused folds in before a FORGET) and
// creates the mount's gate map; they answer nothing and stay for the mount's life, whatever
// handler answers LOOKUP. swap() then loads one handler object for one opcode (the shipped ones at mount time, bpf_handlers from mounts.yaml, or an operator's
// through D-Bus) and makes it the one that answers, remove() leaves the opcode to efused.
// Every object goes through open_handler() (handler_file.h: a root-owned file nobody else can
// write, no symlinks, efused's handler ABI and the opcode it is loaded for); its copy gets
// efuse_conn (the mount's connection: it answers that mount's requests only) and a slot of
// its own (efuse_slot) before load.
//
// A swap is atomic per request: the new copy is attached beside the old one, an RCU grace
// period passes (so every request that could see the new gate value runs the new copy
// too), the gate entry of the opcode takes the new slot in one aligned 4-byte store, and
// the old copy is detached. efuse_handler_turn() (efuse_handler.bpf.h) has the copies of
// one request agree on what the gate said when the first of them looked, so each request
// is looked at by the old handler or the new one: never by both, never by none. A load the
// verifier refuses, or an attach the kernel refuses, changes nothing.
//
// Maps are the mount's, not a copy's: a map a handler object declares is created by the
// first object that declares it and handed (by name) to every later one, so efused's
// answers (efuse_getattr_answers, efuse_lookup_answers, efuse_complete_dirs, ...) survive a
// swap. Nothing is pinned: destroying the set, or the death of efused, detaches everything;
// the module then answers the dead connection's requests with ENOTCONN.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <iterator>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "efuse_handler_maps.h"

struct bpf_object;
struct bpf_link;
struct ring_buffer;

namespace efuse::bpf {

// enum efuse_handler_stat's names, in its order: /sys/fs/efuse/handler/<name>, and the
// `reason` label of efuse_kernel_handler_fallbacks_total (all but "answered").
inline constexpr const char* kHandlerStatNames[] = {
    "answered", "declined", "no_memory", "disconnected", "bad_verdict",
    "bad_nodeid", "bad_error", "bad_size", "bad_opcode", "bad_reply"};
static_assert(std::size(kHandlerStatNames) == EFUSE_HANDLER_NR_STATS,
              "kHandlerStatNames follows enum efuse_handler_stat");

// The handlers efused ships (bpf/handlers/<object>.bpf.o), by FUSE opcode: what a mount on
// the module tier gets for every opcode its bpf_handlers does not name. A new handler is
// one line here (its object declares the same opcode: EFUSE_HANDLER_OPCODE).
struct ShippedHandler {
  uint32_t opcode;
  const char* object;
};
inline constexpr ShippedHandler kShippedHandlers[] = {{3, "efuse_getattr"},
                                                      {1, "efuse_lookup"},
                                                      {22, "efuse_getxattr"},
                                                      {23, "efuse_listxattr"},
                                                      {15, "efuse_read"},
                                                      {14, "efuse_open"},
                                                      {25, "efuse_flush"},
                                                      {17, "efuse_statfs"},
                                                      {18, "efuse_release"},
                                                      {34, "efuse_access"}};
// The counting programs, one copy each per mount, loaded before any handler and never
// swapped: outcomes (efuse_handler_done) and lookups taken from positive LOOKUP answers
// (efuse_handler_entry; without it a positive answer would leave efused's lookup count short).
inline constexpr const char* kStatsObject = "efuse_handler_stats";
inline constexpr const char* kEntryCountsObject = "efuse_entry_counts";
inline constexpr const char* kCountingObjects[] = {kStatsObject, kEntryCountsObject};

// Where the shipped handlers are: $EFUSE_HANDLER_DIR when set; else bpf/handlers/ of the
// build tree when efused runs from one (build/bin/efused); else the installed
// /usr/lib/efuse/handlers (EFUSE_INSTALLED_HANDLER_DIR).
std::string default_handler_dir();
// The file of a shipped object in `dir`.
inline std::string shipped_object(const std::string& dir, const char* object) {
  return dir + "/" + object + ".bpf.o";
}

// One opcode's handler: the program in place (prog_id 0 when none is) and what happened to
// the opcode's slot since the mount started.
struct HandlerView {
  uint32_t opcode = 0;
  std::string path;       // the object it was loaded from ("" when none is loaded)
  uint32_t prog_id = 0;   // kernel program id
  std::string tag;        // the kernel's program tag, 16 hex digits
  uint32_t abi = 0;       // handler ABI the object was built for
  double loaded_at = 0;   // unix seconds of the swap that put it in place
  uint64_t swaps = 0;         // programs put in place (the first load counts)
  uint64_t failed_swaps = 0;  // swaps refused (file, ABI, verifier, attach)
  uint64_t removals = 0;
  // bpf_prog_info run_time_ns / run_cnt of every program that held the slot, summed; they
  // grow only while kernel.bpf_stats_enabled is 1.
  uint64_t run_ns = 0;
  uint64_t run_count = 0;
};

class HandlerSet {
 public:
  // Loads the counting programs (kCountingObjects) from `dir` for connection `conn`, and
  // creates the mount's READ block cache (efuse_read_blocks) of `read_cache_bytes` (whole
  // sets of EFUSE_READ_WAYS blocks; none below one set). Handler files must be owned by
  // `owner` (root in efused). Null, with *error saying why, when an object is refused or
  // the kernel refuses it.
  static std::unique_ptr<HandlerSet> load(const std::string& dir, uint32_t conn,
                                          std::string* error, uid_t owner = 0,
                                          uint64_t read_cache_bytes = 0);
  ~HandlerSet();
  HandlerSet(const HandlerSet&) = delete;
  HandlerSet& operator=(const HandlerSet&) = delete;

  // Puts the handler object at `path` in place for `opcode` (see above). False with *error
  // (the verifier's log when it refused the program) and the old handler still in place.
  bool swap(uint32_t opcode, const std::string& path, std::string* error);
  // No handler for `opcode` any more: its requests go to efused. False when none was loaded.
  bool remove(uint32_t opcode, std::string* error);
  // Every opcode that had a handler or a swap attempt, by opcode.
  std::vector<HandlerView> list() const;

  // The answer maps (efuse_getattr_answers, efuse_lookup_answers). false: not stored (no
  // handler object declared the map yet, or it is full).
  bool put_attr(uint64_t nodeid, const efuse_handler_entry& entry);
  bool keeps_attrs() const { return attr_fd_.load() >= 0; }
  void drop_attr(uint64_t nodeid);
  bool put_name(const efuse_handler_name_key& key, const efuse_handler_entry& entry);
  void drop_name(const efuse_handler_name_key& key);
  // efuse_xattr_answers: (nodeid, name; "" for the list). false: not stored.
  bool put_xattr(const efuse_handler_name_key& key, const efuse_handler_entry& entry);
  void drop_xattr(const efuse_handler_name_key& key);
  // The maps keyed by nodeid: efuse_open_answers, efuse_flush_answers,
  // efuse_complete_dirs (the LOOKUP handler's complete directories) and
  // efuse_statfs_answers, efuse_access_answers. false: not stored.
  enum class NodeMap { Open, Flush, Complete, Statfs, Access };
  // The opcodes a handler is attached for (bit n: opcode n, below 64): what the module shows
  // handlers (EFUSE_DEV_IOC_HANDLER_OPCODES, kmod patch 0018).
  uint64_t opcode_mask() const;
  bool put_node(NodeMap map, uint64_t nodeid, const efuse_handler_entry& entry);
  void drop_node(NodeMap map, uint64_t nodeid);
  // efuse_dir_names: the names of the complete directories. false: not stored (no LOOKUP
  // handler declared the map, or it is full).
  bool put_dir_name(const efuse_handler_name_key& key);
  void drop_dir_name(const efuse_handler_name_key& key);
  // efuse_entry_lookups (efuse_entry_counts): lookups the kernel took from positive LOOKUP
  // answers for `nodeid` (0 when it has no counter); the counter's removal. Key 0: lookups
  // not counted (the map was full).
  uint64_t entry_lookups(uint64_t nodeid) const;
  void drop_entry_lookups(uint64_t nodeid);

  // efuse_read_blocks, mapped read-write (empty without a block cache): what KernelAnswers
  // fills, under the protocol of efuse_handler_maps.h.
  std::span<efuse_read_block> read_blocks() const { return {read_pool_, read_slots_}; }

  // efuse_handler_outcomes summed over CPUs: EFUSE_HANDLER_OUTCOME_SLOTS counters, at
  // opcode * EFUSE_HANDLER_NR_STATS + stat. Empty if the map cannot be read.
  std::vector<uint64_t> outcomes() const;

  // The RELEASEs the RELEASE handler took over (efuse_releases, a ring buffer): `sink` is
  // given each one, on a thread of the set's own while the map exists (from now on, or
  // from the swap that creates it), and by drain_releases(), which delivers every one
  // queued so far before it returns (efused calls it before each FORGET: a node's releases
  // come before it, as requests would). Set once, before the mount serves requests; the
  // thread stops, after a last drain, when the set is destroyed (its handlers detached).
  using ReleaseSink = std::function<void(const efuse_release_event&)>;
  void set_release_sink(ReleaseSink sink);
  void drain_releases();
  // Delivers what is queued and stops the reader for good (before what the sink uses goes;
  // the destructor does it too). RELEASEs taken over after it wait in the ring unread.
  void stop_releases();
  // RELEASEs delivered to the sink.
  uint64_t releases_delivered() const { return releases_delivered_.load(); }

  uint32_t conn() const { return conn_; }
  // Kernel program ids: the counting programs, then the handlers by opcode.
  std::vector<uint32_t> program_ids() const;

 private:
  HandlerSet() = default;
  struct Installed {
    bpf_object* obj = nullptr;
    bpf_link* link = nullptr;
    int prog_fd = -1;
    uint32_t slot = 0;
    std::vector<char> bytes;  // what obj was opened from
    HandlerView view;
  };
  // The kernel's run statistics of one program.
  static void run_stats(int prog_fd, uint64_t* ns, uint64_t* count);
  void retire(Installed& h, HandlerView& counters);  // detaches and frees, keeps the sums
  void publish(uint32_t opcode, uint32_t slot);     // gate store after a grace period
  bool grace_period();

  mutable std::mutex mu_;                  // everything below but the atomics
  std::map<uint32_t, Installed> table_;    // opcode -> the handler in place
  std::map<uint32_t, HandlerView> counters_;  // opcode -> swaps, failures, retired run stats
  std::map<std::string, int> maps_;        // the mount's maps by name (fds owned)
  struct Counting {
    bpf_object* obj = nullptr;
    bpf_link* link = nullptr;
    std::vector<char> bytes;  // what obj was opened from
  };
  bool load_counting(const std::string& path, std::string* error);
  std::vector<Counting> counting_;  // kCountingObjects order; detached last, in reverse
  int gate_fd_ = -1;
  int read_fd_ = -1;                     // efuse_read_blocks
  efuse_read_block* read_pool_ = nullptr;  // ... mapped
  size_t read_slots_ = 0;
  size_t read_len_ = 0;
  uint32_t* gate_ = nullptr;  // the gate map, mmapped
  size_t gate_len_ = 0;
  int sync_fd_ = -1;          // ARRAY_OF_MAPS: an update waits for an RCU grace period
  int sync_inner_fd_ = -1;
  uint32_t conn_ = 0;
  uid_t owner_ = 0;
  std::atomic<int> attr_fd_{-1};
  std::atomic<int> name_fd_{-1};
  std::atomic<int> xattr_fd_{-1};
  std::atomic<int> open_fd_{-1};
  std::atomic<int> flush_fd_{-1};
  std::atomic<int> complete_fd_{-1};
  std::atomic<int> statfs_fd_{-1};
  std::atomic<int> access_fd_{-1};
  std::atomic<int> dir_names_fd_{-1};
  std::atomic<int>& node_fd(NodeMap map);
  int outcomes_fd_ = -1;
  int entry_fd_ = -1;
  // The release reader (set_release_sink): release_mu_ serializes consuming the ring.
  void start_release_reader();  // with mu_ held; no-op without the map or the sink
  void stop_release_reader();
  static int on_release(void* self, void* data, size_t size);
  std::mutex release_mu_;
  ReleaseSink release_sink_;          // set once, before the reader starts
  bool releases_stopped_ = false;     // stop_releases(): never started again (under mu_)
  ring_buffer* release_rb_ = nullptr;
  int release_stop_fd_ = -1;          // eventfd: wakes the reader to stop
  std::thread release_thread_;
  std::atomic<uint64_t> releases_delivered_{0};
};

}  // namespace efuse::bpf
