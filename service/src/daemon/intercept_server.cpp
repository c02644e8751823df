#include "daemon/intercept_server.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <utility>

#include "common/intercept_abi.h"
#include "common/log.h"

namespace efuse::daemon {
namespace {

constexpr int kSweepMs = 1000;  // marks are looked at again this often

void close_all(const int* fds, size_t n) {
  for (size_t i = 0; i < n; ++i) ::close(fds[i]);
}

}  // namespace

std::unique_ptr<InterceptServer> InterceptServer::start(const std::string& path,
                                                        fs::Filesystem& fs, bool allow_other,
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
  return std::unique_ptr<InterceptServer>(new InterceptServer(path, fs, allow_other, fd, wake));
}

InterceptServer::InterceptServer(std::string path, fs::Filesystem& fs, bool allow_other,
                                 int listen_fd, int wake_fd)
    : path_(std::move(path)),
      fs_(fs),
      allow_other_(allow_other),
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
              (allow_other_ || cred.uid == owner_ || cred.uid == 0) &&
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
  efuse_intercept_request req;
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
  efuse_intercept_reply reply = {};
  if (static_cast<size_t>(n) != sizeof req || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) ||
      nfds != 1 || req.magic != EFUSE_INTERCEPT_MAGIC || req.version != EFUSE_INTERCEPT_VERSION ||
      (req.op != EFUSE_IREQ_WRITING && req.op != EFUSE_IREQ_CHANGED)) {
    malformed_.fetch_add(1);
    reply.error = EINVAL;
  } else {
    Status s = req.op == EFUSE_IREQ_WRITING ? fs_.library_writing(fds[0]) : fs_.library_changed(fds[0]);
    reply.error = s.ok() ? 0 : s.error();
    (s.ok() ? accepted_ : refused_).fetch_add(1);
  }
  close_all(fds, nfds);  // the library's open: efused keeps none (a lease would see it)
  // A client that does not read its replies loses its connection rather than stall this.
  return ::send(conn, &reply, sizeof reply, MSG_DONTWAIT | MSG_NOSIGNAL) ==
         static_cast<ssize_t>(sizeof reply);
}

}  // namespace efuse::daemon
