#include "bpf/handlers.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "bpf/layout.h"
#include "bpf/libbpf_log.h"
#include "bpf/maps.h"

#ifndef EFUSE_INSTALLED_HANDLER_DIR
#define EFUSE_INSTALLED_HANDLER_DIR "/usr/lib/efuse/handlers"
#endif

namespace efuse::bpf {

namespace {

// The maps efused reads and writes, per object, against the shared header.
const MapLayout kGetattrMaps[] = {
    {"efuse_getattr_answers", sizeof(__u64), sizeof(efuse_handler_entry)}};
const MapLayout kLookupMaps[] = {
    {"efuse_lookup_answers", sizeof(efuse_handler_name_key), sizeof(efuse_handler_entry)}};
const MapLayout kStatsMaps[] = {{"efuse_handler_outcomes", sizeof(__u32), sizeof(__u64)}};
const MapLayout kXattrMaps[] = {
    {"efuse_xattr_answers", sizeof(efuse_handler_name_key), sizeof(efuse_handler_entry)}};
const MapLayout kEntryCountMaps[] = {{"efuse_entry_lookups", sizeof(__u64), sizeof(__u64)}};

std::span<const MapLayout> layouts_of(std::string_view name) {
  if (name == "efuse_getattr") return kGetattrMaps;
  if (name == "efuse_lookup") return kLookupMaps;
  if (name == "efuse_entry_counts") return kEntryCountMaps;
  if (name == "efuse_xattr") return kXattrMaps;
  return kStatsMaps;
}

bool exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

// Sets the object's `const volatile __u32 efuse_conn` (efuse_handler.bpf.h) before load.
bool set_conn(bpf_object* obj, uint32_t conn, std::string* error) {
  const struct btf* btf = bpf_object__btf(obj);
  bpf_map* rodata = nullptr;
  bpf_map* map;
  bpf_object__for_each_map(map, obj) {
    const char* name = bpf_map__name(map);
    if (name != nullptr && std::strstr(name, ".rodata") != nullptr) rodata = map;
  }
  int sec = btf ? btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC) : -1;
  if (rodata == nullptr || sec < 0) {
    *error = "no .rodata with efuse_conn in the object";
    return false;
  }
  const struct btf_type* t = btf__type_by_id(btf, sec);
  const struct btf_var_secinfo* v = btf_var_secinfos(t);
  for (int i = 0; i < btf_vlen(t); ++i, ++v) {
    const struct btf_type* var = btf__type_by_id(btf, v->type);
    if (std::strcmp(btf__name_by_offset(btf, var->name_off), "efuse_conn") != 0) continue;
    size_t size = 0;
    const auto* initial = static_cast<const char*>(bpf_map__initial_value(rodata, &size));
    if (initial == nullptr || v->offset + sizeof conn > size || v->size != sizeof conn) break;
    std::vector<char> data(initial, initial + size);
    std::memcpy(data.data() + v->offset, &conn, sizeof conn);
    return bpf_map__set_initial_value(rodata, data.data(), data.size()) == 0;
  }
  *error = "no efuse_conn in the object's .rodata";
  return false;
}

}  // namespace

std::string default_handler_dir() {
  if (const char* env = std::getenv("EFUSE_HANDLER_DIR"); env != nullptr && *env) return env;
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = '\0';
    std::string dir(exe);
    dir.erase(dir.rfind('/'));  // .../build/bin
    std::string tree = dir + "/../bpf/handlers";
    if (exists(tree + "/efuse_getattr.bpf.o")) return tree;
  }
  return EFUSE_INSTALLED_HANDLER_DIR;
}

std::unique_ptr<HandlerSet> HandlerSet::load(const std::string& dir, uint32_t conn,
                                             std::string* error) {
  route_libbpf_log();
  std::unique_ptr<HandlerSet> set(new HandlerSet());
  set->conn_ = conn;
  set->dir_ = dir;
  for (const char* name : kHandlerObjects) {
    const std::string path = dir + "/" + name + ".bpf.o";
    Object o;
    o.obj = bpf_object__open_file(path.c_str(), nullptr);
    if (o.obj == nullptr) {
      *error = "cannot open handler " + path + ": " + strerror(errno);
      return nullptr;
    }
    set->objects_.push_back(o);
    Object& cur = set->objects_.back();
    std::string why;
    if (!check_layout(cur.obj, layouts_of(name), &why)) {
      *error = "handler " + path + ": " + why;
      return nullptr;
    }
    if (!set_conn(cur.obj, conn, &why)) {
      *error = "handler " + path + ": " + why;
      return nullptr;
    }
    if (bpf_object__load(cur.obj) != 0) {
      int e = errno;
      std::string warning = take_first_libbpf_warning();
      *error = "the kernel refused handler " + path + ": " + strerror(e) +
               (warning.empty() ? "" : " (" + warning + ")");
      return nullptr;
    }
    bpf_program* prog;
    bpf_object__for_each_program(prog, cur.obj) {
      bpf_link* link = bpf_program__attach(prog);
      if (link == nullptr) {
        int e = errno;
        *error = std::string("cannot attach handler ") + bpf_program__name(prog) + " (" + path +
                 "): " + strerror(e);
        return nullptr;
      }
      cur.links.push_back(link);
    }
  }
  auto fd = [&set](const char* map) {
    for (const Object& o : set->objects_) {
      int f = bpf_object__find_map_fd_by_name(o.obj, map);
      if (f >= 0) return f;
    }
    return -1;
  };
  set->attr_fd_ = fd("efuse_getattr_answers");
  set->name_fd_ = fd("efuse_lookup_answers");
  set->outcomes_fd_ = fd("efuse_handler_outcomes");
  set->entry_fd_ = fd("efuse_entry_lookups");
  set->xattr_fd_ = fd("efuse_xattr_answers");
  return set;
}

HandlerSet::~HandlerSet() {
  // Answering handlers go first, the counting program last.
  for (auto it = objects_.rbegin(); it != objects_.rend(); ++it) {
    for (bpf_link* l : it->links) bpf_link__destroy(l);
    bpf_object__close(it->obj);
  }
}

bool HandlerSet::put_attr(uint64_t nodeid, const efuse_handler_entry& entry) {
  __u64 key = nodeid;
  return bpf_map_update_elem(attr_fd_, &key, &entry, BPF_ANY) == 0;
}

void HandlerSet::drop_attr(uint64_t nodeid) {
  __u64 key = nodeid;
  bpf_map_delete_elem(attr_fd_, &key);
}

bool HandlerSet::put_name(const efuse_handler_name_key& key, const efuse_handler_entry& entry) {
  return bpf_map_update_elem(name_fd_, &key, &entry, BPF_ANY) == 0;
}

void HandlerSet::drop_name(const efuse_handler_name_key& key) {
  bpf_map_delete_elem(name_fd_, &key);
}

bool HandlerSet::put_xattr(const efuse_handler_name_key& key, const efuse_handler_entry& entry) {
  return bpf_map_update_elem(xattr_fd_, &key, &entry, BPF_ANY) == 0;
}

void HandlerSet::drop_xattr(const efuse_handler_name_key& key) {
  bpf_map_delete_elem(xattr_fd_, &key);
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
  std::vector<uint32_t> ids;
  for (const Object& o : objects_) {
    bpf_program* prog;
    bpf_object__for_each_program(prog, o.obj) {
      struct bpf_prog_info info {};
      __u32 len = sizeof info;
      if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &len) == 0) ids.push_back(info.id);
    }
  }
  return ids;
}

}  // namespace efuse::bpf
