#include "daemon/intercept_server.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstring>
#include <utility>

#include "common/intercept_abi.h"
#include "common/log.h"

namespace efuse::daemon {
namespace {

constexpr int kSweepMs = 1000;  // marks are looked at again this often
// Supplementary groups of a caller a hand-over takes (the kernel's NGROUPS_MAX is 65536;
// a caller in more is left to the kernel).
constexpr size_t kMaxCallerGroups = 1024;

void close_all(const int* fds, size_t n) {
  for (size_t i = 0; i < n; ++i) ::close(fds[i]);
}

}  // namespace

std::unique_ptr<InterceptServer> InterceptServer::start(const std::string& path,
                                                        fs::Filesystem& fs,
                                                        const Options& options,
                                                        std::string* why) {
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    *why = path + ": longer than a socket path may be";
    return nullptr;
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *why = std::string("socket: ") + strerror(errno);
    return nullptr;
  }
  ::unlink(path.c_str());
  // Every user may connect (the library runs as any user); who is answered is decided per
  // connection (SO_PEERCRED).
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::chmod(path.c_str(), 0666) != 0 || ::listen(fd, 64) != 0) {
    *why = path + ": " + strerror(errno);
    ::close(fd);
    ::unlink(path.c_str());
    return nullptr;
  }
  int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    *why = std::string("eventfd: ") + strerror(errno);
    ::close(fd);
    ::unlink(path.c_str());
    return nullptr;
  }
  return std::unique_ptr<InterceptServer>(new InterceptServer(path, fs, options, fd, wake));
}

InterceptServer::InterceptServer(std::string path, fs::Filesystem& fs, const Options& options,
                                 int listen_fd, int wake_fd)
    : path_(std::move(path)),
      fs_(fs),
      options_(options),
      owner_(geteuid()),
      listen_fd_(listen_fd),
      wake_fd_(wake_fd) {
  thread_ = std::thread([this] { run(); });
}

InterceptServer::~InterceptServer() {
  uint64_t one = 1;
  (void)!::write(wake_fd_, &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  close_all(conns_.data(), conns_.size());
  ::close(listen_fd_);
  ::close(wake_fd_);
  ::unlink(path_.c_str());
}

void InterceptServer::run() {
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  using Clock = std::chrono::steady_clock;
  auto last_sweep = Clock::now();
  size_t marked = 0;
  std::vector<struct pollfd> fds;
  for (;;) {
    fds.clear();
    fds.push_back({wake_fd_, POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    for (int c : conns_) fds.push_back({c, POLLIN, 0});
    int rc = ::poll(fds.data(), fds.size(), marked > 0 ? kSweepMs : -1);
    if (rc < 0 && errno != EINTR) {
      LOG_WARN("intercept: %s: poll: %s; the library's writes go through the kernel from now on",
               path_.c_str(), strerror(errno));
      return;
    }
    if (rc > 0 && fds[0].revents != 0) return;
    // Connections that asked or hung up, newest last; removed by swapping with the last.
    for (size_t i = fds.size(); rc > 0 && i-- > 2;) {
      if (fds[i].revents == 0) continue;
      int conn = fds[i].fd;
      if (!(fds[i].revents & POLLIN) || !answer(conn)) {
        ::close(conn);
        conns_[i - 2] = conns_.back();
        conns_.pop_back();
      }
    }
    if (rc > 0 && fds[1].revents != 0) take_connections();
    auto now = Clock::now();
    if (now - last_sweep >= std::chrono::milliseconds(kSweepMs) || marked == 0) {
      marked = fs_.library_sweep();
      last_sweep = now;
    }
  }
}

void InterceptServer::take_connections() {
  for (;;) {
    int conn = ::accept4(listen_fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (conn < 0) return;  // EAGAIN: none left (or an error the next poll sees again)
    struct ucred cred = {};
    socklen_t len = sizeof cred;
    bool ok = ::getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
              (options_.allow_other || cred.uid == owner_ || cred.uid == 0) &&
              conns_.size() < kMaxConnections;
    if (!ok) {
      refused_.fetch_add(1);
      ::close(conn);  // the library sees the connection end and lets the kernel serve
      continue;
    }
    conns_.push_back(conn);
  }
}

bool InterceptServer::answer(int conn) {
  efuse_intercept_open req;  // the largest request; the others are its head
  struct iovec iov = {&req, sizeof req};
  alignas(struct cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
  struct msghdr msg = {};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n = ::recvmsg(conn, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n <= 0) return n < 0 && (errno == EAGAIN || errno == EINTR);  // 0: hung up
  int fds[4];
  size_t nfds = 0;
  for (struct cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k && nfds < 4; ++i)
      std::memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
  }
  const efuse_intercept_request& head = req.head;
  const size_t len = static_cast<size_t>(n);
  const bool well_formed =
      !(msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) && len >= sizeof head &&
      head.magic == EFUSE_INTERCEPT_MAGIC && head.version == EFUSE_INTERCEPT_VERSION &&
      (head.op == EFUSE_IREQ_OPEN        ? nfds == 0 && efuse_intercept_open_ok(&req, len)
       : head.op == EFUSE_IREQ_OPEN_NODE ? nfds == 1 && efuse_intercept_open_node_ok(&req, len)
                                         : (head.op == EFUSE_IREQ_WRITING ||
                                            head.op == EFUSE_IREQ_CHANGED) &&
                                               len == sizeof head && nfds == 1);
  efuse_intercept_reply reply = {};
  int handed = -1;  // the descriptor sent back (EFUSE_IREQ_OPEN)
  if (!well_formed) {
    malformed_.fetch_add(1);
    reply.error = EINVAL;
  } else if (head.op == EFUSE_IREQ_OPEN || head.op == EFUSE_IREQ_OPEN_NODE) {
    reply.error = hand_over(conn, req, head.op == EFUSE_IREQ_OPEN_NODE ? fds[0] : -1, &handed);
  } else if (!options_.writes) {
    refused_.fetch_add(1);
    reply.error = EROFS;  // a read-only mount (or one whose writes the kernel keeps)
  } else {
    Status s = head.op == EFUSE_IREQ_WRITING ? fs_.library_writing(fds[0]) : fs_.library_changed(fds[0]);
    reply.error = s.ok() ? 0 : s.error();
    (s.ok() ? accepted_ : refused_).fetch_add(1);
  }
  close_all(fds, nfds);  // the library's open: efused keeps none (a lease would see it)
  // A client that does not read its replies loses its connection rather than stall this.
  bool sent;
  if (handed >= 0) {
    struct iovec riov;
    alignas(struct cmsghdr) char rcontrol[CMSG_SPACE(sizeof(int))];
    struct msghdr rmsg;
    efuse_intercept_prepare(&rmsg, &riov, &reply, sizeof reply, rcontrol, handed);
    sent = ::sendmsg(conn, &rmsg, MSG_DONTWAIT | MSG_NOSIGNAL) == static_cast<ssize_t>(sizeof reply);
    ::close(handed);  // the caller's now (or nobody's, if it left)
  } else {
    sent = ::send(conn, &reply, sizeof reply, MSG_DONTWAIT | MSG_NOSIGNAL) ==
           static_cast<ssize_t>(sizeof reply);
  }
  return sent;
}

int InterceptServer::hand_over(int conn, const efuse_intercept_open& req, int node_fd, int* fd) {
  if (!options_.opens || options_.nodes != (node_fd >= 0)) {
    handover_refused_.fetch_add(1);
    return EOPNOTSUPP;
  }
  // By node: a file of this mount (its device; the descriptor may name anything), whose
  // nodeid is its inode number. The kernel's cached attributes tell (AT_STATX_DONT_SYNC: no
  // request to this efused, which must never wait on its own mount); neither changes for
  // an inode's life.
  uint64_t nodeid = 0;
  if (node_fd >= 0) {
    struct statx sx = {};
    if (::statx(node_fd, "", AT_EMPTY_PATH | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_INO, &sx) != 0 ||
        makedev(sx.stx_dev_major, sx.stx_dev_minor) != options_.mount_dev ||
        !S_ISREG(sx.stx_mode)) {
      handover_refused_.fetch_add(1);
      return EINVAL;
    }
    nodeid = sx.stx_ino;
  }
  // Who asks: the credentials the kernel recorded when the caller connected (for this one
  // request), and its supplementary groups from the same record, so no /proc/PID lookup
  // can be fooled by a PID reused meanwhile.
  struct ucred cred = {};
  socklen_t clen = sizeof cred;
  gid_t groups[kMaxCallerGroups];
  socklen_t glen = sizeof groups;
  if (::getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 ||
      ::getsockopt(conn, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) != 0) {
    handover_refused_.fetch_add(1);
    return EPERM;  // more groups than kept here (ERANGE), or no record: the kernel answers
  }
  fs::Filesystem::LibraryCaller caller;
  caller.uid = cred.uid;
  caller.gid = cred.gid;
  caller.groups.assign(groups, groups + glen / sizeof(gid_t));
  caller.must_search = options_.mount_parent;
  // By node, the kernel walked the path with the caller's credentials; the descriptor
  // grants no more than reopening it through /proc/self/fd would.
  Result<int> opened =
      node_fd >= 0 ? fs_.library_open_node(nodeid, static_cast<int>(req.flags), caller)
                   : fs_.library_open(std::string_view(req.path, req.path_len),
                                      static_cast<int>(req.flags), caller);
  if (!opened.ok()) {
    handover_refused_.fetch_add(1);
    return opened.error();
  }
  handed_over_.fetch_add(1);
  *fd = opened.value();
  return 0;
}

}  // namespace efuse::daemon
