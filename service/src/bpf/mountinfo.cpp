#include "bpf/mountinfo.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

namespace efuse::bpf {
namespace {

constexpr long kFuseCtlSuperMagic = 0x65735543;
constexpr const char* kFuseCtlDir = "/sys/fs/fuse/connections";

// mountinfo escapes ' ', '\t', '\n' and '\\' as \ooo.
std::string unescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3' && s[i + 2] >= '0' && s[i + 2] <= '7' &&
        s[i + 3] >= '0' && s[i + 3] <= '7') {
      out.push_back(static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 +
                                      (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::vector<std::string_view> fields(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && line[i] == ' ') ++i;
    size_t j = i;
    while (j < line.size() && line[j] != ' ') ++j;
    if (j > i) out.push_back(line.substr(i, j - i));
    i = j;
  }
  return out;
}

bool is_fuse_type(std::string_view t) {
  return t == "fuse" || t == "fuseblk" || t.substr(0, 5) == "fuse.";
}

bool parse_dev(std::string_view s, uint32_t* major, uint32_t* minor) {
  size_t colon = s.find(':');
  if (colon == std::string_view::npos) return false;
  std::string a(s.substr(0, colon)), b(s.substr(colon + 1));
  char* end = nullptr;
  unsigned long ma = std::strtoul(a.c_str(), &end, 10);
  if (a.empty() || *end != '\0') return false;
  unsigned long mi = std::strtoul(b.c_str(), &end, 10);
  if (b.empty() || *end != '\0') return false;
  if (ma > 0xfff || mi > 0xfffff) return false;
  *major = static_cast<uint32_t>(ma);
  *minor = static_cast<uint32_t>(mi);
  return true;
}

}  // namespace

std::string connection_name(uint32_t conn) {
  return std::to_string(conn >> 20) + ":" + std::to_string(conn & 0xfffffU);
}

std::map<uint32_t, FuseMount> parse_fuse_mounts(std::string_view text) {
  std::map<uint32_t, FuseMount> out;
  std::map<uint32_t, bool> have_root;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
    // id parent major:minor root mountpoint options [optional...] - fstype source superopts
    std::vector<std::string_view> f = fields(line);
    size_t sep = 0;
    for (size_t i = 6; i < f.size(); ++i) {
      if (f[i] == "-") {
        sep = i;
        break;
      }
    }
    if (sep == 0 || sep + 1 >= f.size()) continue;
    if (!is_fuse_type(f[sep + 1])) continue;
    uint32_t major = 0, minor = 0;
    if (!parse_dev(f[2], &major, &minor)) continue;
    uint32_t conn = connection_id(major, minor);
    bool root = f[3] == "/";
    auto it = out.find(conn);
    if (it != out.end() && (have_root[conn] || !root)) continue;
    out[conn] = FuseMount{unescape(f[4]), std::string(f[sep + 1])};
    have_root[conn] = root;
  }
  return out;
}

std::map<uint32_t, FuseMount> read_fuse_mounts() {
  std::ifstream in("/proc/self/mountinfo");
  if (!in) return {};
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_fuse_mounts(ss.str());
}

FuseCtl FuseCtl::open(std::string* reason) {
  struct statfs st;
  if (statfs(kFuseCtlDir, &st) == 0 && st.f_type == kFuseCtlSuperMagic) {
    int fd = ::open(kFuseCtlDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) return FuseCtl(fd);
  }
  // Not mounted there (no systemd, a container): an instance of our own, attached nowhere.
  int fs = fsopen("fusectl", FSOPEN_CLOEXEC);
  if (fs < 0) {
    *reason = std::string("fusectl is not mounted at ") + kFuseCtlDir +
              " and cannot be opened (fsopen: " + std::strerror(errno) + ")";
    return FuseCtl();
  }
  int mnt = -1;
  if (fsconfig(fs, FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) == 0)
    mnt = fsmount(fs, FSMOUNT_CLOEXEC,
                  MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC);
  const int err = errno;
  ::close(fs);
  if (mnt < 0) {
    *reason = std::string("fusectl is not mounted at ") + kFuseCtlDir +
              " and an instance of its own cannot be made (" + std::strerror(err) + ")";
    return FuseCtl();
  }
  return FuseCtl(mnt);
}

FuseCtl& FuseCtl::operator=(FuseCtl&& o) noexcept {
  if (this != &o) {
    if (dirfd_ >= 0) ::close(dirfd_);
    dirfd_ = o.dirfd_;
    o.dirfd_ = -1;
  }
  return *this;
}

FuseCtl::~FuseCtl() {
  if (dirfd_ >= 0) ::close(dirfd_);
}

std::map<uint32_t, uint64_t> FuseCtl::waiting() const {
  std::map<uint32_t, uint64_t> out;
  if (dirfd_ < 0) return out;
  int fd = ::openat(dirfd_, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return out;
  DIR* d = fdopendir(fd);
  if (d == nullptr) {
    ::close(fd);
    return out;
  }
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    unsigned long v = std::strtoul(e->d_name, &end, 10);
    if (e->d_name[0] < '0' || e->d_name[0] > '9' || *end != '\0' || v > 0xffffffffUL) continue;
    const std::string file = std::string(e->d_name) + "/waiting";
    int w = ::openat(dirfd_, file.c_str(), O_RDONLY | O_CLOEXEC);
    if (w < 0) continue;
    char buf[32];
    ssize_t n = ::read(w, buf, sizeof buf - 1);
    ::close(w);
    if (n <= 0) continue;
    buf[n] = '\0';
    out[static_cast<uint32_t>(v)] = std::strtoull(buf, nullptr, 10);
  }
  closedir(d);
  return out;
}

}  // namespace efuse::bpf
