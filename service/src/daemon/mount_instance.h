// One served mount: backend + session + channel + the kernel mount, with its lifecycle.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bpf/handlers.h"
#include "common/slot_file.h"
#include "daemon/config.h"
#include "daemon/fd_store.h"
#include "daemon/intercept_publisher.h"
#include "fs/filesystem.h"
#include "fuse/channel.h"
#include "fuse/kernel_answers.h"
#include "fuse/mount.h"
#include "fuse/session.h"
#include "fuse/uring_channel.h"

namespace efuse::daemon {

// Checks a mount against the file system: source and mountpoint exist and are directories,
// and neither lies inside the other (efused must never serve its own mountpoint). Returns
// an empty string when usable, else the problem in words.
std::string check_paths(const MountConfig& cfg);

// What a mount serves, for logs and the mount table: its source, or the backend's name when
// it has none (memory).
std::string served(const MountConfig& cfg);

// The INIT flags named in `text` (EFUSE_MASK_KERNEL_FEATURES: comma-separated feature names
// as in efuse_kernel_feature{feature=...}). Returns false with *error naming a bad one.
bool parse_feature_mask(const std::string& text, uint64_t* mask, std::string* error);

// Whether going from `a` to `b` needs an unmount and mount (otherwise the change is applied
// live with MountInstance::apply_policy).
bool needs_remount(const MountConfig& a, const MountConfig& b);

// The FUSE opcode named `name` ("lookup"), as bpf_handlers and efusectl name them; 0 when
// no opcode has that name or it has no handler slot.
uint32_t handler_opcode(std::string_view name);
// The handlers a mount on the module tier runs, by opcode: the shipped ones (in `dir`) for
// every opcode that has one, and the mount's bpf_handlers over them.
std::map<uint32_t, std::string> handler_table(const MountConfig& cfg, const std::string& dir);

// The tier a mount is served on (efuse_mount_info{tier}, efusectl status).
inline constexpr const char* kTierModule = "module";  // efuse.ko, /dev/efuse, eBPF handlers
inline constexpr const char* kTierStock = "stock";    // the kernel's own FUSE, /dev/fuse

// fuse::AnswerStore over one mount's handler maps (bpf::HandlerSet).
class HandlerStore final : public fuse::AnswerStore {
 public:
  explicit HandlerStore(std::unique_ptr<bpf::HandlerSet> set) : set_(std::move(set)) {}
  bool put_attr(uint64_t nodeid, const efuse_handler_entry& e) override {
    return set_->put_attr(nodeid, e);
  }
  void drop_attr(uint64_t nodeid) override { set_->drop_attr(nodeid); }
  bool keeps_attrs() const override { return set_->keeps_attrs(); }
  void drain_releases() override { set_->drain_releases(); }
  bool put_name(const efuse_handler_name_key& k, const efuse_handler_entry& e) override {
    return set_->put_name(k, e);
  }
  void drop_name(const efuse_handler_name_key& k) override { set_->drop_name(k); }
  uint64_t entry_lookups(uint64_t nodeid) override { return set_->entry_lookups(nodeid); }
  void drop_entry_lookups(uint64_t nodeid) override { set_->drop_entry_lookups(nodeid); }
  bool put_xattr(const efuse_handler_name_key& k, const efuse_handler_entry& e) override {
    return set_->put_xattr(k, e);
  }
  void drop_xattr(const efuse_handler_name_key& k) override { set_->drop_xattr(k); }
  bool put_node(NodeMap map, uint64_t nodeid, const efuse_handler_entry& e) override {
    return set_->put_node(node_map(map), nodeid, e);
  }
  void drop_node(NodeMap map, uint64_t nodeid) override { set_->drop_node(node_map(map), nodeid); }
  bool put_dir_name(const efuse_handler_name_key& k) override { return set_->put_dir_name(k); }
  void drop_dir_name(const efuse_handler_name_key& k) override { set_->drop_dir_name(k); }
  std::span<efuse_read_block> read_blocks() override { return set_->read_blocks(); }
  const bpf::HandlerSet& set() const { return *set_; }
  bpf::HandlerSet& mutable_set() { return *set_; }

 private:
  static bpf::HandlerSet::NodeMap node_map(NodeMap map) {
    switch (map) {
      case NodeMap::Open:
        return bpf::HandlerSet::NodeMap::Open;
      case NodeMap::Flush:
        return bpf::HandlerSet::NodeMap::Flush;
      case NodeMap::Statfs:
        return bpf::HandlerSet::NodeMap::Statfs;
      case NodeMap::Access:
        return bpf::HandlerSet::NodeMap::Access;
      case NodeMap::Complete:
        break;
    }
    return bpf::HandlerSet::NodeMap::Complete;
  }
  std::unique_ptr<bpf::HandlerSet> set_;
};

class MountInstance final : private fs::Invalidator {
 public:
  explicit MountInstance(MountConfig cfg);
  ~MountInstance();
  MountInstance(const MountInstance&) = delete;
  MountInstance& operator=(const MountInstance&) = delete;

  // Mounts, answers INIT and starts the workers. On failure nothing stays mounted.
  Status start(std::string* error);
  // Flushes the kernel's dirty pages of the mount through the still-running server (see
  // flush_dirty), then unmounts (lazily when busy), waits for the workers, aborts the
  // connection if clients keep it alive longer than `grace_ms`.
  void stop(int grace_ms = 2000);
  // True once the connection ended without stop() (someone unmounted it).
  bool lost() const;

  // Restart without remounting (mount_restart.cpp). With a store (set before start), a
  // mount keeps its connection's descriptors and its restart state there while it is live.
  void set_fd_store(const FdStore* store) { store_ = store; }
  // Serves the connection a previous efused left in the store (`fds`): restores the state,
  // resumes on the channel's threads without INIT and has the kernel resend what the previous
  // efused had read but not answered. On failure (*error says why) nothing of it is kept
  // and `fds` is still the caller's (see abandon()).
  Status resume(FdStore::Mount& fds, std::string* error);
  // A previous efused's connection that will not be resumed: its mount at the mountpoint
  // is detached and the connection aborted (as a stop would), and the store forgets it.
  static void abandon(const std::string& name, const std::string& mountpoint,
                      FdStore::Mount fds, const FdStore* store);
  // Stops serving without unmounting, for the next efused: the threads finish what they
  // hold; the connection, the backing ids and the state stay with the kernel and the store.
  void detach_for_restart();
  // Times this mount's connection was resumed by a new efused since it was mounted.
  uint64_t resumes() const;
  // Why the mount would not survive a restart ("" when it would, or no store is used).
  const std::string& resume_note() const { return resume_note_; }
  bool live() const { return mounted_now_; }
  // Applies the policy parts of `cfg` (cache timeouts, keep_cache, io_path) and the memory
  // backend's limits without a remount.
  void apply_policy(const MountConfig& cfg);

  const MountConfig& config() const { return cfg_; }
  const fuse::Session* session() const { return session_.get(); }
  std::vector<const fuse::WorkerStats*> worker_stats() const;
  // What serves requests now: "uring", "classic", or "" when not live.
  const char* transport() const;
  // Why a configured io_uring transport is not in use ("" when it is, or was not asked for).
  const std::string& transport_fallback() const { return fallback_reason_; }
  // Why transport auto chose /dev/fuse although io_uring may be usable (empty otherwise).
  const std::string& transport_note() const { return transport_note_; }
  // The I/O path in effect for new opens: io_path as configured when the kernel granted
  // FUSE passthrough, "cache" when it did not (then io_path_note() says why), "" when not
  // live.
  const char* effective_io_path() const;
  const std::string& io_path_note() const { return passthrough_missing_; }
  // The backend's series, and efuse_intercept_calls_total while published (intercept).
  std::vector<fs::Metric> backend_metrics() const;
  // How the backend chose cache or passthrough per file (io_path auto; empty without one).
  accel::IoPathReport io_path_report() const {
    return fs_ ? fs_->io_path_report() : accel::IoPathReport{};
  }
  // The tier in effect (kTierModule, kTierStock; "" when not live), and why a mount with
  // kernel_module auto runs on the stock tier, or why the module tier runs without
  // handlers ("" otherwise).
  const char* tier() const;
  const std::string& tier_note() const { return tier_note_; }
  // The module tier's handlers for this mount (null when none are attached), and the
  // answers efused keeps for them.
  const bpf::HandlerSet* handlers() const { return handler_store_ ? &handler_store_->set() : nullptr; }
  // "" when this mount's handlers can be listed and swapped; else why not, naming the tier
  // in effect (the stock tier: no module, no handlers).
  std::string handlers_unavailable() const;
  // Hot swap (issue 20, bpf::HandlerSet::swap/remove). False with *error; the handler in
  // place before stays.
  bool swap_handler(uint32_t opcode, const std::string& path, std::string* error);
  bool remove_handler(uint32_t opcode, std::string* error);
  // A reload that changes bpf_handlers: swaps what changed live (the shipped handler again
  // for an opcode no longer named). Returns the failures ("" when none); cfg_ is not
  // changed (apply_policy does that).
  std::string apply_handlers(const MountConfig& next);
  fuse::KernelAnswerStats kernel_answers() const {
    fuse::KernelAnswerStats s = answers_ ? answers_->stats() : fuse::KernelAnswerStats{};
    if (answers_ && session_) s.kernel_releases = session_->kernel_releases();
    return s;
  }
  unsigned uring_queues() const { return channel_ ? channel_->queue_count() : 0; }
  fuse::WorkerCount worker_count() const {
    return channel_ ? channel_->worker_count() : fuse::WorkerCount{};
  }

 private:
  // fs::Invalidator: the backend's watcher reports outside changes; we tell the kernel.
  Status inval_inode(uint64_t ino, bool data_too) override;
  Status inval_entry(uint64_t parent, std::string_view name, bool appeared) override;
  Status inval_listing(uint64_t dir) override;

  MountConfig cfg_;
  // The restart state while recorded; declared before the backend and session, which point
  // into it, so it goes after them.
  std::unique_ptr<SlotFile> state_;
  std::unique_ptr<fs::Filesystem> fs_;
  std::unique_ptr<fuse::Session> session_;
  std::unique_ptr<fuse::Connection> conn_;  // the /dev/fuse fd; outlives channel_
  std::unique_ptr<fuse::Channel> channel_;  // classic or io_uring
  std::string fallback_reason_;
  std::string transport_note_;
  std::string passthrough_missing_;  // why INIT did not grant passthrough ("" when it did)
  std::string tier_note_;
  bool module_tier_ = false;  // the mount goes through /dev/efuse
  std::unique_ptr<HandlerStore> handler_store_;  // the handlers; outlives answers_
  std::unique_ptr<fuse::KernelAnswers> answers_;  // outlives the channel's workers
  fuse::Mounted mounted_;
  bool mounted_now_ = false;
  InterceptPublisher intercept_;  // published while live with intercept: true
  const FdStore* store_ = nullptr;
  std::string resume_note_;

  // The backend, session and transport choice for cfg_ (start and resume).
  Status prepare(bool* want_uring, std::string* error);
  // Records into a new state file and keeps it and the connection's descriptors in the
  // store (start), or keeps the new channel's clones there (resume).
  void begin_recording();
  void store_descriptors(bool with_conn);

  Status start_channel(int fd, bool want_uring, std::string* error);
  // Why INIT did not grant passthrough (passthrough_missing_), once INIT is settled.
  void note_passthrough();
  // kernel_module: decides the tier before mounting; false with *error when `on` cannot be
  // honoured.
  bool choose_tier(std::string* error);
  // Loads and attaches the handlers for the new connection (module tier).
  void attach_handlers();
  // Tells the module which opcodes the attached handlers answer (kmod patch 0018), after
  // every change of them: requests of the others skip the handlers.
  void tell_handler_opcodes();
  // Logs (once per start, and when a reload asks for it) that io_path cannot be in effect.
  void report_io_path() const;
  // syncfs() on the mount's root from a helper thread while the workers serve the WRITEs
  // it causes; gives up (logged) when the mount makes no progress for a while.
  void flush_dirty();
  uint64_t requests_served() const;
  bool channel_stopped() const;
  bool channel_wait(int ms);
};

}  // namespace efuse::daemon
