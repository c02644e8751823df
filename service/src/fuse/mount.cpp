#include "fuse/mount.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "common/log.h"
#include "common/process.h"
#include "common/unique_fd.h"

namespace fuse {

using efuse::Errno;
using efuse::Result;

bool detach_stale(const std::string& mountpoint) {
  // statfs always reaches a FUSE server (stat may be answered from the attribute cache,
  // which outlives the server), so a dead connection shows as ENOTCONN.
  struct statfs sf;
  if (statfs(mountpoint.c_str(), &sf) == 0 || errno != ENOTCONN) return false;
  if (umount2(mountpoint.c_str(), MNT_DETACH) == 0) {
    LOG_WARN("detached a stale FUSE mount at %s (its server had died)", mountpoint.c_str());
    return true;
  }
  // Not root: let fusermount3 try.
  std::string cmd = "fusermount3 -u -z -- '" + mountpoint + "' 2>/dev/null";
  if (system(cmd.c_str()) == 0) {
    LOG_WARN("detached a stale FUSE mount at %s (its server had died)", mountpoint.c_str());
    return true;
  }
  return false;
}

static std::string common_options(const MountOptions& o) {
  std::string s;
  if (o.allow_other) s += ",allow_other";
  if (o.default_permissions) s += ",default_permissions";
  return s;
}

bool efuse_module_loaded(std::string* why) {
  std::ifstream f("/proc/filesystems");
  std::string line;
  bool listed = false;
  while (std::getline(f, line)) {
    if (line.size() >= 6 && line.compare(line.size() - 6, 6, "\tefuse") == 0) listed = true;
  }
  struct stat st;
  if (!listed) {
    *why = "the efuse kernel module is not loaded (/proc/filesystems has no efuse; "
           "modprobe efuse, see kmod/README.md)";
    return false;
  }
  if (stat("/dev/efuse", &st) != 0 || !S_ISCHR(st.st_mode)) {
    *why = "the efuse kernel module is loaded but /dev/efuse is missing";
    return false;
  }
  return true;
}

static Result<Mounted> mount_kernel(const MountOptions& o, std::string* error) {
  const char* device = o.efuse_module ? "/dev/efuse" : "/dev/fuse";
  efuse::UniqueFd fd(::open(device, O_RDWR | O_CLOEXEC));
  if (!fd) {
    *error = std::string("cannot open ") + device + ": " + strerror(errno);
    return efuse::last_errno();
  }
  struct stat st;
  if (stat(o.mountpoint.c_str(), &st) != 0) {
    int e = errno;
    *error = "cannot stat mountpoint " + o.mountpoint + ": " + strerror(e);
    return Errno{e};
  }
  // rootmode is octal in the kernel's parser.
  char rootmode[32];
  std::snprintf(rootmode, sizeof rootmode, "%o", S_IFDIR);
  std::string data = "fd=" + std::to_string(fd.get()) + ",rootmode=" + rootmode + ",user_id=" +
         std::to_string(getuid()) + ",group_id=" + std::to_string(getgid()) + common_options(o);
  std::string type = (o.efuse_module ? "efuse." : "fuse.") + o.subtype;
  unsigned long flags = MS_NOSUID | MS_NODEV | (o.read_only ? MS_RDONLY : 0);
  if (::mount(o.fsname.c_str(), o.mountpoint.c_str(), type.c_str(), flags, data.c_str()) != 0) {
    int e = errno;
    *error = "mount(" + o.mountpoint + ") failed: " + strerror(e);
    return Errno{e};
  }
  Mounted m;
  m.fd = fd.release();
  m.efuse_module = o.efuse_module;
  return m;
}

// fusermount3 mounts on our behalf and passes the /dev/fuse fd back over a socket
// (_FUSE_COMMFD), as libfuse does.
static Result<Mounted> mount_fusermount(const MountOptions& o, std::string* error) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    *error = std::string("socketpair: ") + strerror(errno);
    return efuse::last_errno();
  }
  std::string opts = "fsname=" + o.fsname + ",subtype=" + o.subtype + ",nosuid,nodev" +
                     (o.read_only ? ",ro" : ",rw") + common_options(o);
  pid_t pid = fork();
  if (pid < 0) {
    *error = std::string("fork: ") + strerror(errno);
    return efuse::last_errno();
  }
  if (pid == 0) {
    ::close(sv[0]);
    fcntl(sv[1], F_SETFD, 0);
    std::string env = std::to_string(sv[1]);
    setenv("_FUSE_COMMFD", env.c_str(), 1);
    execlp("fusermount3", "fusermount3", "-o", opts.c_str(), "--", o.mountpoint.c_str(),
           static_cast<char*>(nullptr));
    _exit(127);
  }
  ::close(sv[1]);
  char byte;
  struct iovec iov{&byte, 1};
  alignas(struct cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))];
  struct msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  ssize_t n;
  do n = recvmsg(sv[0], &msg, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  ::close(sv[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  struct cmsghdr* c = n > 0 ? CMSG_FIRSTHDR(&msg) : nullptr;
  if (c == nullptr || c->cmsg_type != SCM_RIGHTS) {
    *error = "fusermount3 did not mount " + o.mountpoint + " (exit status " +
             std::to_string(WIFEXITED(status) ? WEXITSTATUS(status) : -1) + ")";
    return Errno{EPERM};
  }
  Mounted m;
  std::memcpy(&m.fd, CMSG_DATA(c), sizeof(int));
  m.via_fusermount = true;
  return m;
}

namespace {

struct MountinfoEntry {
  unsigned minor = 0;
  std::string mountpoint, fstype, source;
};

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && s.size() - i >= 4) {
      out += static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

// /proc/self/mountinfo in order (a later entry at the same mountpoint is stacked on top).
std::vector<MountinfoEntry> read_mountinfo() {
  std::vector<MountinfoEntry> out;
  std::ifstream f("/proc/self/mountinfo");
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream in(line);
    std::string id, parent, dev, root, mp, field;
    if (!(in >> id >> parent >> dev >> root >> mp)) continue;
    while (in >> field && field != "-") {
    }
    MountinfoEntry e;
    if (!(in >> e.fstype)) continue;
    in >> e.source;
    e.mountpoint = unescape(mp);
    e.source = unescape(e.source);
    auto colon = dev.find(':');
    if (colon != std::string::npos) e.minor = static_cast<unsigned>(std::stoul(dev.substr(colon + 1)));
    out.push_back(std::move(e));
  }
  return out;
}

std::optional<MountinfoEntry> topmost_at(const std::string& mountpoint) {
  std::optional<MountinfoEntry> top;
  for (auto& e : read_mountinfo())
    if (e.mountpoint == mountpoint) top = std::move(e);
  return top;
}

std::string read_text(const std::string& path) {
  std::ifstream f(path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

Result<Mounted> mount(const MountOptions& o, std::string* error) {
  if (o.efuse_module && geteuid() != 0) {
    *error = "mounting through the efuse kernel module needs root";
    return Errno{EPERM};
  }
  auto m = geteuid() == 0 ? mount_kernel(o, error) : mount_fusermount(o, error);
  if (!m.ok()) return m;
  // The connection id is the minor number of the mount's anonymous device. stat() of the
  // new mount root would block until INIT is answered, so read it from mountinfo instead.
  if (auto top = topmost_at(o.mountpoint)) m->conn_id = top->minor;
  return m;
}

std::optional<FuseMountAt> fuse_mount_at(const std::string& mountpoint) {
  auto top = topmost_at(mountpoint);
  auto fuse_type = [](const std::string& t, const std::string& fs) {
    return t == fs || t == fs + "blk" || t.starts_with(fs + ".");
  };
  if (!top || !(fuse_type(top->fstype, "fuse") || fuse_type(top->fstype, "efuse")))
    return std::nullopt;
  return FuseMountAt{top->fstype, top->source, top->minor};
}

std::string mountpoint_of(unsigned conn_id) {
  std::string at;
  for (auto& e : read_mountinfo())
    if (e.minor == conn_id && (e.fstype == "fuse" || e.fstype.starts_with("fuse.")))
      at = e.mountpoint;
  return at;
}

std::vector<pid_t> fuse_servers(unsigned conn_id) {
  std::vector<pid_t> out;
  const std::string want = "fuse_connection:\t" + std::to_string(conn_id) + "\n";
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return out;
  while (struct dirent* p = readdir(proc)) {
    if (p->d_name[0] < '1' || p->d_name[0] > '9') continue;
    const std::string dir = std::string("/proc/") + p->d_name;
    DIR* fds = opendir((dir + "/fd").c_str());
    if (fds == nullptr) continue;
    bool holds = false;
    while (struct dirent* fd = readdir(fds)) {
      if (fd->d_name[0] == '.') continue;
      char target[64];
      ssize_t n = readlink((dir + "/fd/" + fd->d_name).c_str(), target, sizeof target - 1);
      if (n <= 0) continue;
      target[n] = '\0';
      if (std::strcmp(target, "/dev/fuse") != 0 && std::strcmp(target, "/dev/efuse") != 0)
        continue;
      if (read_text(dir + "/fdinfo/" + fd->d_name).find(want) != std::string::npos) {
        holds = true;
        break;
      }
    }
    closedir(fds);
    if (holds) out.push_back(static_cast<pid_t>(std::stol(p->d_name)));
  }
  closedir(proc);
  return out;
}

std::string describe_holder(const FuseMountAt& at) {
  std::string s = at.fstype + " mount of " + at.source + " (FUSE connection " +
                  std::to_string(at.conn_id);
  auto servers = fuse_servers(at.conn_id);
  for (size_t i = 0; i < servers.size(); ++i)
    s += (i == 0 ? ", served by " : " and ") + efuse::describe_process(servers[i]);
  if (servers.empty()) s += ", server not identified";
  return s + ")";
}

Result<const char*> unmount(const std::string& mountpoint, bool via_fusermount) {
  if (via_fusermount) {
    std::string cmd = "fusermount3 -u -z -- '" + mountpoint + "'";
    if (system(cmd.c_str()) != 0) return Errno{EIO};
    return "detached";
  }
  if (umount2(mountpoint.c_str(), UMOUNT_NOFOLLOW) == 0) return "unmounted";
  if (errno != EBUSY) return efuse::last_errno();
  if (umount2(mountpoint.c_str(), MNT_DETACH | UMOUNT_NOFOLLOW) == 0) return "detached";
  return efuse::last_errno();
}

bool abort_connection(unsigned conn_id, bool efuse_module) {
  if (conn_id == 0) return false;
  const char* kFusectl = efuse_module ? "/sys/fs/efuse/connections" : "/sys/fs/fuse/connections";
  const char* ctl_type = efuse_module ? "efusectl" : "fusectl";
  std::string path = std::string(kFusectl) + "/" + std::to_string(conn_id) + "/abort";
  efuse::UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  // Without fusectl mounted (no systemd to mount it), mount it for this write only and
  // take it away again, so the host is left as it was found. Another efused still using
  // it keeps it busy: then it stays (EBUSY), which is harmless.
  bool mounted_here = false;
  if (!fd && errno == ENOENT && geteuid() == 0 &&
      ::mount(ctl_type, kFusectl, ctl_type, 0, nullptr) == 0) {
    mounted_here = true;
    fd.reset(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  }
  const bool aborted = fd && ::write(fd.get(), "1", 1) == 1;
  fd.reset();
  if (mounted_here) ::umount2(kFusectl, UMOUNT_NOFOLLOW);
  return aborted;
}

}  // namespace fuse
