#include "bpf/handler_file.h"

#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "bpf/libbpf_log.h"
#include "common/unique_fd.h"
#include "efuse_handler.h"

namespace efuse::bpf {

namespace {

constexpr size_t kMaxObjectBytes = 16u << 20;  // far beyond any handler object

std::string mode_text(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// Owned by root or `owner`, and nobody else can add, remove or rename its entries.
std::string untrusted_dir(const struct stat& st, uid_t owner) {
  if (st.st_uid != 0 && st.st_uid != owner)
    return "owned by uid " + std::to_string(st.st_uid) + ", not root";
  if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX))
    return "writable by group or other (mode " + mode_text(st.st_mode) + ")";
  return {};
}

}  // namespace

bool read_trusted_file(const std::string& path, uid_t owner, std::vector<char>* bytes,
                       std::string* why) {
  if (path.empty() || path[0] != '/') {
    *why = "not an absolute path";
    return false;
  }
  UniqueFd dir(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
  std::string walked;
  size_t pos = 1;
  for (;;) {
    struct stat st;
    if (!dir || ::fstat(dir.get(), &st) != 0) {
      *why = (walked.empty() ? std::string("/") : walked) + ": " + strerror(errno);
      return false;
    }
    if (std::string bad = untrusted_dir(st, owner); !bad.empty()) {
      *why = "directory " + (walked.empty() ? std::string("/") : walked) + " is " + bad;
      return false;
    }
    size_t slash = path.find('/', pos);
    std::string part = path.substr(pos, slash == std::string::npos ? slash : slash - pos);
    if (part == "..") {
      *why = "'..' in the path";
      return false;
    }
    const std::string here = walked + "/" + part;
    if (part.empty() || part == ".") {
      if (slash == std::string::npos) {
        *why = "names a directory";
        return false;
      }
      pos = slash + 1;
      continue;
    }
    struct stat link;
    if (::fstatat(dir.get(), part.c_str(), &link, AT_SYMLINK_NOFOLLOW) == 0 &&
        S_ISLNK(link.st_mode)) {
      *why = here + " is a symlink (handler objects are opened without following symlinks)";
      return false;
    }
    if (slash != std::string::npos) {
      dir.reset(::openat(dir.get(), part.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!dir) {
        *why = here + ": " + strerror(errno);
        return false;
      }
      walked = here;
      pos = slash + 1;
      continue;
    }
    UniqueFd fd(::openat(dir.get(), part.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (!fd) {
      *why = errno == ELOOP ? here + " is a symlink" : std::string(strerror(errno));
      return false;
    }
    if (::fstat(fd.get(), &st) != 0) {
      *why = strerror(errno);
      return false;
    }
    if (!S_ISREG(st.st_mode)) {
      *why = "not a regular file";
      return false;
    }
    if (st.st_uid != owner) {
      *why = "owned by uid " + std::to_string(st.st_uid) + ", not " +
             (owner == 0 ? std::string("root") : "uid " + std::to_string(owner));
      return false;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
      *why = "writable by group or other (mode " + mode_text(st.st_mode) + ")";
      return false;
    }
    if (static_cast<size_t>(st.st_size) > kMaxObjectBytes) {
      *why = "larger than " + std::to_string(kMaxObjectBytes >> 20) + " MiB";
      return false;
    }
    bytes->resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < bytes->size()) {
      ssize_t n = ::read(fd.get(), bytes->data() + got, bytes->size() - got);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        *why = n < 0 ? strerror(errno) : "changed while read";
        return false;
      }
      got += static_cast<size_t>(n);
    }
    return true;
  }
}

namespace {

// The .rodata variable `name`: its map and place, or false.
bool find_rodata(bpf_object* obj, const char* name, bpf_map** rodata, uint32_t* offset) {
  const struct btf* btf = bpf_object__btf(obj);
  *rodata = nullptr;
  bpf_map* map;
  bpf_object__for_each_map(map, obj) {
    const char* n = bpf_map__name(map);
    if (n != nullptr && std::strstr(n, ".rodata") != nullptr) *rodata = map;
  }
  int sec = btf ? btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC) : -1;
  if (*rodata == nullptr || sec < 0) return false;
  const struct btf_type* t = btf__type_by_id(btf, sec);
  const struct btf_var_secinfo* v = btf_var_secinfos(t);
  for (int i = 0; i < btf_vlen(t); ++i, ++v) {
    const struct btf_type* var = btf__type_by_id(btf, v->type);
    if (std::strcmp(btf__name_by_offset(btf, var->name_off), name) != 0) continue;
    if (v->size != sizeof(uint32_t)) return false;
    *offset = v->offset;
    return true;
  }
  return false;
}

}  // namespace

bool rodata_u32(bpf_object* obj, const char* name, uint32_t* value) {
  bpf_map* rodata;
  uint32_t offset;
  if (!find_rodata(obj, name, &rodata, &offset)) return false;
  size_t size = 0;
  const auto* initial = static_cast<const char*>(bpf_map__initial_value(rodata, &size));
  if (initial == nullptr || offset + sizeof *value > size) return false;
  std::memcpy(value, initial + offset, sizeof *value);
  return true;
}

bool set_rodata_u32(bpf_object* obj, const char* name, uint32_t value) {
  bpf_map* rodata;
  uint32_t offset;
  if (!find_rodata(obj, name, &rodata, &offset)) return false;
  size_t size = 0;
  const auto* initial = static_cast<const char*>(bpf_map__initial_value(rodata, &size));
  if (initial == nullptr || offset + sizeof value > size) return false;
  std::vector<char> data(initial, initial + size);
  std::memcpy(data.data() + offset, &value, sizeof value);
  return bpf_map__set_initial_value(rodata, data.data(), data.size()) == 0;
}

const char* handler_section(uint32_t opcode) {
  constexpr uint32_t kRead = 15;  // FUSE_READ
  return opcode == kRead ? "raw_tp.w/efuse_handler_read" : "raw_tp.w/efuse_handler";
}

OpenedHandler open_handler(const std::string& path, uint32_t opcode, bool expect_opcode,
                           uid_t owner, std::string* why) {
  route_libbpf_log();  // libbpf's complaints go to efused's log, not stderr
  std::vector<char> bytes;
  if (!read_trusted_file(path, owner, &bytes, why)) return {};
  std::string name = path.substr(path.rfind('/') + 1);
  LIBBPF_OPTS(bpf_object_open_opts, opts, .object_name = name.c_str());
  bpf_object* obj = bpf_object__open_mem(bytes.data(), bytes.size(), &opts);
  if (obj == nullptr) {
    *why = std::string("not a BPF object libbpf can open: ") + strerror(errno);
    return {};
  }
  auto fail = [&](std::string text) {
    bpf_object__close(obj);
    *why = std::move(text);
    return OpenedHandler{};
  };
  uint32_t abi = 0;
  if (!rodata_u32(obj, "efuse_handler_abi", &abi))
    return fail("declares no handler ABI version (efuse_handler_abi; efused speaks ABI " +
                std::to_string(EFUSE_HANDLER_ABI_VERSION) +
                "): build it with bpf/handlers/efuse_handler.bpf.h");
  if (abi != EFUSE_HANDLER_ABI_VERSION)
    return fail("built for handler ABI " + std::to_string(abi) + ", efused speaks ABI " +
                std::to_string(EFUSE_HANDLER_ABI_VERSION));
  uint32_t declared = 0, unused = 0;
  if (expect_opcode) {
    if (!rodata_u32(obj, "efuse_handler_opcode", &declared))
      return fail("declares no opcode (EFUSE_HANDLER_OPCODE(...) in efuse_handler.bpf.h)");
    if (declared != opcode)
      return fail("answers opcode " + std::to_string(declared) + ", not opcode " +
                  std::to_string(opcode));
    if (!rodata_u32(obj, "efuse_slot", &unused) || !rodata_u32(obj, "efuse_conn", &unused) ||
        bpf_object__find_map_by_name(obj, "efuse_gate") == nullptr)
      return fail("lacks efuse_slot, efuse_conn or the efuse_gate map of efuse_handler.bpf.h");
    int programs = 0;
    bpf_program* prog;
    bpf_object__for_each_program(prog, obj) {
      ++programs;
      if (std::strcmp(bpf_program__section_name(prog), handler_section(opcode)) != 0)
        return fail(std::string("program ") + bpf_program__name(prog) + " is in section " +
                    bpf_program__section_name(prog) + ", not " + handler_section(opcode));
    }
    if (programs != 1)
      return fail("holds " + std::to_string(programs) + " programs; a handler object holds one");
  }
  return {obj, abi, std::move(bytes)};
}

}  // namespace efuse::bpf
