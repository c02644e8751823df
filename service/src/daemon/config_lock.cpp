#include "daemon/config_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "common/process.h"

namespace efuse::daemon {
namespace {

std::string runtime_dir() {
  if (geteuid() == 0) return "/run/efuse";
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  return xdg != nullptr && *xdg == '/' ? std::string(xdg) + "/efuse" : "";
}

// systemd-escape style: '/' becomes '-', anything but [A-Za-z0-9_.] becomes \xNN; names too
// long for a file name become an FNV-1a hash of the path.
std::string escape(const std::string& path) {
  std::string out;
  for (size_t i = path.front() == '/' ? 1 : 0; i < path.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(path[i]);
    if (c == '/') {
      out += '-';
    } else if (isalnum(c) || c == '_' || c == '.') {
      out += static_cast<char>(c);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  if (out.size() <= 200) return out;
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : path) h = (h ^ c) * 1099511628211ull;
  char hex[24];
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
  return hex;
}

std::string real_path(const std::string& p) {
  char buf[PATH_MAX];
  return realpath(p.c_str(), buf) != nullptr ? std::string(buf) : p;
}

}  // namespace

ConfigLock::~ConfigLock() {
  if (fd_ < 0) return;
  ::unlink(path_.c_str());  // while still locked: see acquire()
  ::close(fd_);             // releases the flock
}

std::string ConfigLock::lock_path(const std::string& config_path) {
  std::string dir = runtime_dir();
  if (dir.empty()) return "";
  return dir + "/config-" + escape(real_path(config_path)) + ".lock";
}

ConfigLock::Outcome ConfigLock::acquire(const std::string& config_path, std::string* message) {
  std::string path = lock_path(config_path);
  if (path.empty()) {
    *message = "no runtime directory (not root and no XDG_RUNTIME_DIR)";
    return Outcome::Unavailable;
  }
  std::string dir = path.substr(0, path.rfind('/'));
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    *message = "cannot create " + dir + ": " + strerror(errno);
    return Outcome::Unavailable;
  }
  int fd = -1;
  for (;;) {
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) {
      *message = "cannot open " + path + ": " + strerror(errno);
      return Outcome::Unavailable;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) break;
    // The holder unlinks the file (still locked) when it exits: a lock on a file that is no
    // longer at `path` is worth nothing, so take the one there now.
    struct stat at_path, locked;
    if (stat(path.c_str(), &at_path) == 0 && fstat(fd, &locked) == 0 &&
        at_path.st_ino == locked.st_ino && at_path.st_dev == locked.st_dev) {
      std::string pid = std::to_string(getpid()) + "\n";
      if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) < 0) {
        // The lock holds without the pid; a second efused only names us less precisely.
      }
      if (fd_ >= 0) ::close(fd_);
      fd_ = fd;
      path_ = path;
      return Outcome::Held;
    }
    ::close(fd);
  }
  int e = errno;
  if (e != EWOULDBLOCK) {
    ::close(fd);
    *message = "cannot lock " + path + ": " + strerror(e);
    return Outcome::Unavailable;
  }
  char buf[32] = {};
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  ::close(fd);
  pid_t holder = n > 0 ? static_cast<pid_t>(std::atol(buf)) : 0;
  *message = "config file " + real_path(config_path) + " is already served by " +
             (holder > 0 ? describe_process(holder) : std::string("another efused")) +
             " (lock " + path + "); stop it first (systemctl stop efused, or kill that pid)";
  return Outcome::InUse;
}

}  // namespace efuse::daemon
