// libefuse_intercept.so: asking efused over the mount's intercept socket
// (common/intercept_abi.h, EFUSE_IREQ_*). One connection per request: write opens and
// attribute changes are rare next to reads, and a connection of its own cannot be shared
// by mistake with a forked child or another thread, nor kept open by a program that
// closes every descriptor but its own.
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>

#include "intercept/state.h"

namespace efuse::intercept {
namespace {

void close_quiet(long fd) {
  int saved = errno;
  sys(SYS_close, fd);
  errno = saved;
}

// A connection to m's efused (the peer checked to be the record's process), at a high
// number and close-on-exec; -1 when there is none.
long connect_to(const Mount* m) {
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  size_t len = strnlen(m->sock, sizeof m->sock);
  if (len == 0 || len >= sizeof addr.sun_path) return -1;
  memcpy(addr.sun_path, m->sock, len + 1);
  long fd = sys(SYS_socket, AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (fd >= 0 && fd < kHighFd) {
    long high = sys(SYS_fcntl, fd, F_DUPFD_CLOEXEC, kHighFd);
    close_quiet(fd);
    fd = high;
  }
  if (fd < 0) return -1;
  long rc;
  do rc = sys(SYS_connect, fd, reinterpret_cast<long>(&addr), sizeof addr);
  while (rc < 0 && errno == EINTR);
  struct ucred cred = {};
  socklen_t cl = sizeof cred;
  if (rc != 0 || sys(SYS_getsockopt, fd, SOL_SOCKET, SO_PEERCRED, reinterpret_cast<long>(&cred),
                     reinterpret_cast<long>(&cl)) != 0 ||
      cred.pid != m->pid) {
    close_quiet(fd);
    return -1;
  }
  return fd;
}

// One request and its reply: 0, -1 with efused's errno, or -2 when the exchange broke.
int exchange(long conn, uint32_t op, int fd) {
  efuse_intercept_request req;
  struct iovec iov;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  struct msghdr msg;
  efuse_intercept_message(&msg, &iov, &req, op, control, fd);
  long n;
  do n = sys(SYS_sendmsg, conn, reinterpret_cast<long>(&msg), MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n != static_cast<long>(sizeof req)) return -2;
  efuse_intercept_reply reply = {};
  // efused answers, or its end closes when it goes away (n == 0): never a hang on a dead one.
  do n = sys(SYS_recvfrom, conn, reinterpret_cast<long>(&reply), sizeof reply, 0, 0, 0);
  while (n < 0 && errno == EINTR);
  if (n != static_cast<long>(sizeof reply)) return -2;
  if (reply.error == 0) return 0;
  errno = reply.error > 0 && reply.error < 4096 ? reply.error : EIO;
  return -1;
}

}  // namespace

int ask_efused(Mount* m, uint32_t op, int fd) {
  if (m == nullptr || !m->writes) {
    errno = EOPNOTSUPP;
    return -1;
  }
  int saved = errno;
  // A second try covers a connection refused while efused was busy accepting others.
  for (int attempt = 0; attempt < 2; ++attempt) {
    long conn = connect_to(m);
    int rc = conn < 0 ? -2 : exchange(conn, op, fd);
    int err = errno;
    if (conn >= 0) close_quiet(conn);
    if (rc == 0) {
      errno = saved;
      return 0;
    }
    if (rc == -1) {
      errno = err;
      return -1;
    }
    if (!writes_alive(m)) break;
  }
  errno = ENOTCONN;
  return -1;
}

}  // namespace efuse::intercept
