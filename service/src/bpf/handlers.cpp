#include "bpf/handlers.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "bpf/handler_file.h"
#include "common/log.h"
#include "bpf/layout.h"
#include "bpf/libbpf_log.h"
#include "bpf/maps.h"

#ifndef EFUSE_INSTALLED_HANDLER_DIR
#define EFUSE_INSTALLED_HANDLER_DIR "/usr/lib/efuse/handlers"
#endif

namespace efuse::bpf {

namespace {

// The maps efused reads and writes, against the shared headers: checked in every object
// that declares one, before it is loaded.
const MapLayout kHandlerMaps[] = {
    {"efuse_getattr_answers", sizeof(__u64), sizeof(efuse_handler_entry)},
    {"efuse_lookup_answers", sizeof(efuse_handler_name_key), sizeof(efuse_handler_entry)},
    {"efuse_xattr_answers", sizeof(efuse_handler_name_key), sizeof(efuse_handler_entry)},
    {"efuse_open_answers", sizeof(__u64), sizeof(efuse_handler_entry)},
    {"efuse_flush_answers", sizeof(__u64), sizeof(efuse_handler_entry)},
    {"efuse_complete_dirs", sizeof(__u64), sizeof(efuse_handler_entry)},
    {"efuse_statfs_answers", sizeof(__u64), sizeof(efuse_handler_entry)},
    {"efuse_access_answers", sizeof(__u64), sizeof(efuse_handler_entry)},
    {"efuse_dir_names", sizeof(efuse_handler_name_key), sizeof(__u32)},
    {"efuse_handler_outcomes", sizeof(__u32), sizeof(__u64)},
    {"efuse_entry_lookups", sizeof(__u64), sizeof(__u64)},
    {"efuse_gate", sizeof(__u32), sizeof(__u32)},
    {"efuse_read_blocks", sizeof(__u32), sizeof(efuse_read_block)},
};

bool check_maps(bpf_object* obj, std::string* why) {
  for (const MapLayout& l : kHandlerMaps) {
    if (bpf_object__find_map_by_name(obj, l.name) == nullptr) continue;
    const MapLayout one[] = {l};
    if (!check_layout(obj, one, why)) return false;
  }
  return true;
}

constexpr size_t kLogBytes = 1u << 20;   // the verifier's log of a refused program
constexpr size_t kLogShown = 16u << 10;  // its tail, in the error

double now_unix() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string hex_tag(const unsigned char* tag) {
  static const char digits[] = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 8; ++i) {
    out += digits[tag[i] >> 4];
    out += digits[tag[i] & 15];
  }
  return out;
}

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

std::atomic<uint32_t> next_slot{1};  // efuse_slot values: unique in efused, never 0

}  // namespace

std::string default_handler_dir() {
  if (const char* env = std::getenv("EFUSE_HANDLER_DIR"); env != nullptr && *env) return env;
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    std::string dir(exe);
    dir.erase(dir.rfind('/'));  // .../build/bin
    std::string tree = dir.substr(0, dir.rfind('/')) + "/bpf/handlers";
    if (exists(tree + "/efuse_getattr.bpf.o")) return tree;
  }
  return EFUSE_INSTALLED_HANDLER_DIR;
}

std::unique_ptr<HandlerSet> HandlerSet::load(const std::string& dir, uint32_t conn,
                                             std::string* error, uid_t owner,
                                             uint64_t read_cache_bytes) {
  route_libbpf_log();
  std::unique_ptr<HandlerSet> set(new HandlerSet());
  set->conn_ = conn;
  set->owner_ = owner;
  LIBBPF_OPTS(bpf_map_create_opts, mmapable, .map_flags = BPF_F_MMAPABLE);
  set->gate_fd_ = bpf_map_create(BPF_MAP_TYPE_ARRAY, "efuse_gate", sizeof(__u32), sizeof(__u32),
                                 EFUSE_HANDLER_OPCODE_SLOTS, &mmapable);
  if (set->gate_fd_ < 0) {
    *error = std::string("cannot create the handler gate map: ") + strerror(errno);
    return nullptr;
  }
  set->gate_len_ = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* gate = mmap(nullptr, set->gate_len_, PROT_READ | PROT_WRITE, MAP_SHARED, set->gate_fd_, 0);
  if (gate == MAP_FAILED) {
    *error = std::string("cannot map the handler gate map: ") + strerror(errno);
    return nullptr;
  }
  set->gate_ = static_cast<uint32_t*>(gate);
  set->sync_inner_fd_ =
      bpf_map_create(BPF_MAP_TYPE_ARRAY, "efuse_sync_in", sizeof(__u32), sizeof(__u32), 1, nullptr);
  LIBBPF_OPTS(bpf_map_create_opts, outer, .inner_map_fd = static_cast<__u32>(set->sync_inner_fd_));
  set->sync_fd_ = set->sync_inner_fd_ < 0 ? -1
                                          : bpf_map_create(BPF_MAP_TYPE_ARRAY_OF_MAPS, "efuse_sync",
                                                           sizeof(__u32), sizeof(__u32), 1, &outer);
  if (set->sync_fd_ < 0) {
    *error = std::string("cannot create the handler sync map: ") + strerror(errno);
    return nullptr;
  }
  if (uint64_t sets = read_cache_bytes / (EFUSE_READ_WAYS * sizeof(efuse_read_block))) {
    const uint32_t slots = static_cast<uint32_t>(std::min<uint64_t>(sets, 1u << 20) * EFUSE_READ_WAYS);
    set->read_fd_ = bpf_map_create(BPF_MAP_TYPE_ARRAY, "efuse_read_blk", sizeof(__u32),
                                   sizeof(efuse_read_block), slots, &mmapable);
    if (set->read_fd_ < 0) {
      *error = "cannot create the READ block cache (" + std::to_string(slots) +
               " blocks): " + strerror(errno);
      return nullptr;
    }
    // An mmapped array lays its elements out 8-byte aligned; efuse_read_block is.
    static_assert(sizeof(efuse_read_block) % 8 == 0);
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    set->read_len_ = (slots * sizeof(efuse_read_block) + page - 1) / page * page;
    void* pool = mmap(nullptr, set->read_len_, PROT_READ | PROT_WRITE, MAP_SHARED, set->read_fd_, 0);
    if (pool == MAP_FAILED) {
      *error = std::string("cannot map the READ block cache: ") + strerror(errno);
      return nullptr;
    }
    set->read_pool_ = static_cast<efuse_read_block*>(pool);
    set->read_slots_ = slots;
  }
  for (const char* object : kCountingObjects)
    if (!set->load_counting(shipped_object(dir, object), error)) return nullptr;
  auto map_fd = [&set](const char* name) {
    for (const Counting& c : set->counting_)
      if (int fd = bpf_object__find_map_fd_by_name(c.obj, name); fd >= 0) return fd;
    return -1;
  };
  set->outcomes_fd_ = map_fd("efuse_handler_outcomes");
  set->entry_fd_ = map_fd("efuse_entry_lookups");
  if (set->outcomes_fd_ < 0 || set->entry_fd_ < 0) {
    *error = "the counting programs lack efuse_handler_outcomes or efuse_entry_lookups";
    return nullptr;
  }
  return set;
}

// One counting program: trusted and of efused's handler ABI like a handler, but for no
// opcode; attached to its own tracepoint for the mount's life.
bool HandlerSet::load_counting(const std::string& path, std::string* error) {
  std::string why;
  OpenedHandler o = open_handler(path, 0, false, owner_, &why);
  if (o.obj == nullptr) {
    *error = "handler " + path + " refused: " + why;
    return false;
  }
  counting_.push_back({o.obj, nullptr, std::move(o.bytes)});
  Counting& c = counting_.back();
  if (!check_maps(c.obj, &why) || !set_rodata_u32(c.obj, "efuse_conn", conn_)) {
    *error = "handler " + path + ": " + (why.empty() ? "no efuse_conn in it" : why);
    return false;
  }
  if (bpf_map* g = bpf_object__find_map_by_name(c.obj, "efuse_gate"))
    bpf_map__reuse_fd(g, gate_fd_);
  if (bpf_object__load(c.obj) != 0) {
    int e = errno;
    std::string warning = take_first_libbpf_warning();
    *error = "the kernel refused handler " + path + ": " + strerror(e) +
             (warning.empty() ? "" : " (" + warning + ")");
    return false;
  }
  bpf_program* prog = bpf_object__next_program(c.obj, nullptr);
  if (prog == nullptr) {
    *error = "handler " + path + " holds no program";
    return false;
  }
  c.link = bpf_program__attach(prog);
  if (c.link == nullptr) {
    *error = std::string("cannot attach ") + bpf_program__name(prog) + " (" + path +
             "): " + strerror(errno);
    return false;
  }
  return true;
}

HandlerSet::~HandlerSet() {
  // Answering handlers go first, the counting program last.
  for (auto& [opcode, h] : table_) {
    if (h.link) bpf_link__destroy(h.link);
    bpf_object__close(h.obj);
  }
  // No handler queues a RELEASE any more: what is queued is delivered, then the reader goes.
  stop_release_reader();
  for (auto c = counting_.rbegin(); c != counting_.rend(); ++c) {
    if (c->link) bpf_link__destroy(c->link);
    bpf_object__close(c->obj);
  }
  for (auto& [name, fd] : maps_) ::close(fd);
  if (gate_) munmap(gate_, gate_len_);
  if (read_pool_) munmap(read_pool_, read_len_);
  for (int fd : {gate_fd_, read_fd_, sync_fd_, sync_inner_fd_})
    if (fd >= 0) ::close(fd);
}

bool HandlerSet::grace_period() {
  // Updating a map-in-map waits for every running BPF program, and every tracepoint call
  // in progress, to finish (synchronize_rcu in the kernel's map_update_elem).
  __u32 key = 0, inner = static_cast<__u32>(sync_inner_fd_);
  return bpf_map_update_elem(sync_fd_, &key, &inner, BPF_ANY) == 0;
}

void HandlerSet::publish(uint32_t opcode, uint32_t slot) {
  // An mmapped array map lays its elements out 8-byte aligned (round_up(value_size, 8)).
  constexpr size_t kStride = (sizeof(__u32) + 7) / 8 * 8;
  auto* entry = reinterpret_cast<uint32_t*>(reinterpret_cast<char*>(gate_) + opcode * kStride);
  __atomic_store_n(entry, slot, __ATOMIC_SEQ_CST);
}

void HandlerSet::run_stats(int prog_fd, uint64_t* ns, uint64_t* count) {
  struct bpf_prog_info info {};
  __u32 len = sizeof info;
  *ns = *count = 0;
  if (prog_fd >= 0 && bpf_obj_get_info_by_fd(prog_fd, &info, &len) == 0) {
    *ns = info.run_time_ns;
    *count = info.run_cnt;
  }
}

void HandlerSet::retire(Installed& h, HandlerView& counters) {
  uint64_t ns, count;
  run_stats(h.prog_fd, &ns, &count);
  counters.run_ns += ns;
  counters.run_count += count;
  if (h.link) bpf_link__destroy(h.link);
  bpf_object__close(h.obj);
  h = Installed{};
}

bool HandlerSet::swap(uint32_t opcode, const std::string& path, std::string* error) {
  std::lock_guard lk(mu_);
  HandlerView& counters = counters_[opcode];
  counters.opcode = opcode;
  auto refuse = [&](std::string text) {
    ++counters.failed_swaps;
    *error = std::move(text);
    return false;
  };
  if (opcode >= EFUSE_HANDLER_OPCODE_SLOTS)
    return refuse("opcode " + std::to_string(opcode) + " has no handler slot");
  std::string why;
  OpenedHandler o = open_handler(path, opcode, true, owner_, &why);
  if (o.obj == nullptr) return refuse(path + " refused: " + why);
  Installed next;
  next.obj = o.obj;
  next.bytes = std::move(o.bytes);
  next.slot = next_slot.fetch_add(1);
  auto close_next = [&] { bpf_object__close(next.obj); };
  if (!check_maps(next.obj, &why)) {
    close_next();
    return refuse(path + ": " + why);
  }
  if (!set_rodata_u32(next.obj, "efuse_conn", conn_) ||
      !set_rodata_u32(next.obj, "efuse_slot", next.slot)) {
    close_next();
    return refuse(path + ": cannot set efuse_conn and efuse_slot");
  }
  // A READ handler learns the block cache's size; without one it answers nothing.
  uint32_t unused;
  if (rodata_u32(next.obj, "efuse_read_sets", &unused) &&
      !set_rodata_u32(next.obj, "efuse_read_sets",
                      static_cast<uint32_t>(read_slots_ / EFUSE_READ_WAYS))) {
    close_next();
    return refuse(path + ": cannot set efuse_read_sets");
  }
  // A handler that leaves efused's own requests to efused learns its process.
  if (rodata_u32(next.obj, "efuse_server_tgid", &unused) &&
      !set_rodata_u32(next.obj, "efuse_server_tgid", static_cast<uint32_t>(::getpid()))) {
    close_next();
    return refuse(path + ": cannot set efuse_server_tgid");
  }
  std::vector<std::string> created;
  bpf_map* map;
  bpf_object__for_each_map(map, next.obj) {
    if (bpf_map__is_internal(map)) continue;
    const std::string name = bpf_map__name(map);
    int fd = name == "efuse_gate" ? gate_fd_ : name == "efuse_read_blocks" ? read_fd_ : -1;
    if (auto it = maps_.find(name); it != maps_.end()) fd = it->second;
    if (fd >= 0) {
      if (bpf_map__reuse_fd(map, fd) != 0) {
        int e = errno;
        close_next();
        return refuse(path + ": cannot hand it the mount's map " + name + ": " + strerror(e));
      }
    } else {
      created.push_back(name);
    }
  }
  bpf_program* prog = bpf_object__next_program(next.obj, nullptr);
  std::vector<char> log(kLogBytes);
  bpf_program__set_log_buf(prog, log.data(), log.size());
  if (bpf_object__load(next.obj) != 0) {
    int e = errno;
    (void)take_first_libbpf_warning();
    std::string text(log.data(), strnlen(log.data(), log.size()));
    if (text.size() > kLogShown) text = "...\n" + text.substr(text.size() - kLogShown);
    close_next();
    return refuse("the kernel refused " + path + " (" + strerror(e) + ")" +
                  (text.empty() ? std::string() : "; verifier log:\n" + text));
  }
  next.link = bpf_program__attach(prog);
  if (next.link == nullptr) {
    int e = errno;
    close_next();
    return refuse("the kernel refused to attach " + path + " to " +
                  std::string(handler_section(opcode)).substr(sizeof "raw_tp.w/" - 1) + " (" +
                  strerror(e) +
                  (e == EINVAL ? ": a handler may not reach past the module's buffer" : "") + ")");
  }
  next.prog_fd = bpf_program__fd(prog);
  if (!grace_period()) {
    int e = errno;
    bpf_link__destroy(next.link);
    close_next();
    return refuse(std::string("cannot wait for an RCU grace period: ") + strerror(e));
  }
  publish(opcode, next.slot);
  // Nothing can fail from here on: the new handler answers.
  for (const std::string& name : created) {
    int fd = dup(bpf_object__find_map_fd_by_name(next.obj, name.c_str()));
    if (fd < 0) continue;
    maps_[name] = fd;
    if (name == "efuse_getattr_answers") attr_fd_.store(fd);
    if (name == "efuse_lookup_answers") name_fd_.store(fd);
    if (name == "efuse_xattr_answers") xattr_fd_.store(fd);
    if (name == "efuse_open_answers") open_fd_.store(fd);
    if (name == "efuse_flush_answers") flush_fd_.store(fd);
    if (name == "efuse_complete_dirs") complete_fd_.store(fd);
    if (name == "efuse_statfs_answers") statfs_fd_.store(fd);
    if (name == "efuse_access_answers") access_fd_.store(fd);
    if (name == "efuse_dir_names") dir_names_fd_.store(fd);
  }
  if (std::find(created.begin(), created.end(), "efuse_releases") != created.end())
    start_release_reader();
  if (auto it = table_.find(opcode); it != table_.end()) retire(it->second, counters);
  struct bpf_prog_info info {};
  __u32 len = sizeof info;
  bpf_obj_get_info_by_fd(next.prog_fd, &info, &len);
  next.view.opcode = opcode;
  next.view.path = path;
  next.view.prog_id = info.id;
  next.view.tag = hex_tag(info.tag);
  next.view.abi = o.abi;
  next.view.loaded_at = now_unix();
  ++counters.swaps;
  table_[opcode] = std::move(next);
  return true;
}

bool HandlerSet::remove(uint32_t opcode, std::string* error) {
  std::lock_guard lk(mu_);
  auto it = table_.find(opcode);
  if (it == table_.end()) {
    *error = "no handler is loaded for opcode " + std::to_string(opcode);
    return false;
  }
  publish(opcode, 0);
  HandlerView& counters = counters_[opcode];
  retire(it->second, counters);
  table_.erase(it);
  ++counters.removals;
  return true;
}

std::vector<HandlerView> HandlerSet::list() const {
  std::lock_guard lk(mu_);
  std::vector<HandlerView> out;
  for (const auto& [opcode, counters] : counters_) {
    HandlerView v = counters;
    if (auto it = table_.find(opcode); it != table_.end()) {
      const HandlerView& now = it->second.view;
      v.path = now.path;
      v.prog_id = now.prog_id;
      v.tag = now.tag;
      v.abi = now.abi;
      v.loaded_at = now.loaded_at;
      uint64_t ns, count;
      run_stats(it->second.prog_fd, &ns, &count);
      v.run_ns += ns;
      v.run_count += count;
    }
    out.push_back(std::move(v));
  }
  return out;
}

bool HandlerSet::put_attr(uint64_t nodeid, const efuse_handler_entry& entry) {
  __u64 key = nodeid;
  int fd = attr_fd_.load();
  return fd >= 0 && bpf_map_update_elem(fd, &key, &entry, BPF_ANY) == 0;
}

void HandlerSet::drop_attr(uint64_t nodeid) {
  __u64 key = nodeid;
  if (int fd = attr_fd_.load(); fd >= 0) bpf_map_delete_elem(fd, &key);
}

bool HandlerSet::put_name(const efuse_handler_name_key& key, const efuse_handler_entry& entry) {
  int fd = name_fd_.load();
  return fd >= 0 && bpf_map_update_elem(fd, &key, &entry, BPF_ANY) == 0;
}

void HandlerSet::drop_name(const efuse_handler_name_key& key) {
  if (int fd = name_fd_.load(); fd >= 0) bpf_map_delete_elem(fd, &key);
}

bool HandlerSet::put_xattr(const efuse_handler_name_key& key, const efuse_handler_entry& entry) {
  int fd = xattr_fd_.load();
  return fd >= 0 && bpf_map_update_elem(fd, &key, &entry, BPF_ANY) == 0;
}

void HandlerSet::drop_xattr(const efuse_handler_name_key& key) {
  if (int fd = xattr_fd_.load(); fd >= 0) bpf_map_delete_elem(fd, &key);
}

// The RELEASE handler's ring buffer (efuse_releases): one reader thread waits on it and on
// an eventfd that stop_release_reader() signals; every consumer (that thread and
// drain_releases(), before a FORGET) consumes under release_mu_.
int HandlerSet::on_release(void* self, void* data, size_t size) {
  auto* set = static_cast<HandlerSet*>(self);
  if (size < sizeof(efuse_release_event)) return 0;  // never: the handler's own layout
  efuse_release_event e;
  std::memcpy(&e, data, sizeof e);
  set->release_sink_(e);
  set->releases_delivered_.fetch_add(1, std::memory_order_relaxed);
  return 0;
}

void HandlerSet::set_release_sink(ReleaseSink sink) {
  std::lock_guard lk(mu_);
  release_sink_ = std::move(sink);
  start_release_reader();
}

void HandlerSet::start_release_reader() {
  if (!release_sink_ || release_thread_.joinable() || releases_stopped_) return;
  auto it = maps_.find("efuse_releases");
  if (it == maps_.end()) return;
  ring_buffer* rb = ring_buffer__new(it->second, &HandlerSet::on_release, this, nullptr);
  int stop = eventfd(0, EFD_CLOEXEC);
  if (rb == nullptr || stop < 0) {
    // Nothing drains the ring: once it is full every RELEASE goes up again, as a request.
    LOG_ERROR("connection %u: cannot read the RELEASE handler's ring buffer (%s); the "
              "RELEASEs it takes over wait there until it is full, then go to efused",
              conn_, strerror(errno));
    if (rb != nullptr) ring_buffer__free(rb);
    if (stop >= 0) ::close(stop);
    return;
  }
  release_rb_ = rb;
  release_stop_fd_ = stop;
  release_thread_ = std::thread([this, ring = ring_buffer__epoll_fd(rb), stop] {
    pollfd fds[2] = {{ring, POLLIN, 0}, {stop, POLLIN, 0}};
    for (;;) {
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) break;
      if (fds[1].revents != 0) break;
      drain_releases();
    }
  });
}

void HandlerSet::drain_releases() {
  std::lock_guard lk(release_mu_);
  if (release_rb_ != nullptr) (void)ring_buffer__consume(release_rb_);
}

void HandlerSet::stop_releases() {
  {
    std::lock_guard lk(mu_);
    releases_stopped_ = true;
  }
  stop_release_reader();
}

void HandlerSet::stop_release_reader() {
  if (!release_thread_.joinable()) return;
  uint64_t one = 1;
  (void)!::write(release_stop_fd_, &one, sizeof one);
  release_thread_.join();
  drain_releases();
  std::lock_guard lk(release_mu_);
  ring_buffer__free(release_rb_);
  release_rb_ = nullptr;
  ::close(release_stop_fd_);
  release_stop_fd_ = -1;
}

std::atomic<int>& HandlerSet::node_fd(NodeMap map) {
  switch (map) {
    case NodeMap::Open:
      return open_fd_;
    case NodeMap::Flush:
      return flush_fd_;
    case NodeMap::Statfs:
      return statfs_fd_;
    case NodeMap::Access:
      return access_fd_;
    case NodeMap::Complete:
      break;
  }
  return complete_fd_;
}

uint64_t HandlerSet::opcode_mask() const {
  std::lock_guard lk(mu_);
  uint64_t mask = 0;
  for (const auto& [opcode, installed] : table_)
    if (opcode < 64) mask |= uint64_t{1} << opcode;
  return mask;
}

bool HandlerSet::put_node(NodeMap map, uint64_t nodeid, const efuse_handler_entry& entry) {
  __u64 key = nodeid;
  int fd = node_fd(map).load();
  return fd >= 0 && bpf_map_update_elem(fd, &key, &entry, BPF_ANY) == 0;
}

void HandlerSet::drop_node(NodeMap map, uint64_t nodeid) {
  __u64 key = nodeid;
  if (int fd = node_fd(map).load(); fd >= 0) bpf_map_delete_elem(fd, &key);
}

bool HandlerSet::put_dir_name(const efuse_handler_name_key& key) {
  __u32 one = 1;
  int fd = dir_names_fd_.load();
  return fd >= 0 && bpf_map_update_elem(fd, &key, &one, BPF_ANY) == 0;
}

void HandlerSet::drop_dir_name(const efuse_handler_name_key& key) {
  if (int fd = dir_names_fd_.load(); fd >= 0) bpf_map_delete_elem(fd, &key);
}

uint64_t HandlerSet::entry_lookups(uint64_t nodeid) const {
  __u64 key = nodeid, value = 0;
  return lookup_raw(entry_fd_, &key, &value) == 0 ? value : 0;
}

void HandlerSet::drop_entry_lookups(uint64_t nodeid) {
  __u64 key = nodeid;
  bpf_map_delete_elem(entry_fd_, &key);
}

std::vector<uint64_t> HandlerSet::outcomes() const {
  const size_t ncpu = possible_cpus();
  std::vector<uint64_t> out(EFUSE_HANDLER_OUTCOME_SLOTS);
  std::vector<uint64_t> per_cpu(ncpu);
  for (__u32 key = 0; key < EFUSE_HANDLER_OUTCOME_SLOTS; ++key) {
    if (lookup_raw(outcomes_fd_, &key, per_cpu.data()) != 0) return {};
    for (uint64_t v : per_cpu) out[key] += v;
  }
  return out;
}

std::vector<uint32_t> HandlerSet::program_ids() const {
  std::lock_guard lk(mu_);
  std::vector<uint32_t> ids;
  auto add = [&ids](int fd) {
    struct bpf_prog_info info {};
    __u32 len = sizeof info;
    if (fd >= 0 && bpf_obj_get_info_by_fd(fd, &info, &len) == 0) ids.push_back(info.id);
  };
  for (const Counting& c : counting_) {
    bpf_program* prog;
    bpf_object__for_each_program(prog, c.obj) add(bpf_program__fd(prog));
  }
  for (const auto& [opcode, h] : table_) add(h.prog_fd);
  return ids;
}

}  // namespace efuse::bpf
