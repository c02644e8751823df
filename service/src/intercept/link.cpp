// libefuse_intercept.so: asking efused over the mount's intercept socket
// (common/intercept_abi.h, EFUSE_IREQ_*). One connection per request: write opens,
// attribute changes and hand-overs are rare next to reads, and a connection of its own
// cannot be shared by mistake with a forked child or another thread, nor kept open by a
// program that closes every descriptor but its own; above all, the kernel records the
// caller's credentials when it connects, so each request carries those of the thread
// making the call now (a process that changed its identity since is asked as what it is).
#include <errno.h>
#include <stddef.h>
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

// Sends `len` bytes at `data` (with `fd` attached unless negative) and reads the reply,
// and the descriptor that comes with it into *got (-1 if none): 0, -1 with efused's errno,
// or -2 when the exchange broke.
int round_trip(long conn, void* data, size_t len, int fd, int* got, bool cloexec) {
  struct iovec iov;
  alignas(struct cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  struct msghdr msg;
  efuse_intercept_prepare(&msg, &iov, data, len, control, fd);
  long n;
  do n = sys(SYS_sendmsg, conn, reinterpret_cast<long>(&msg), MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  if (n != static_cast<long>(len)) return -2;
  efuse_intercept_reply reply = {};
  // efused answers, or its end closes when it goes away (n == 0): never a hang on a dead one.
  alignas(struct cmsghdr) char rcontrol[CMSG_SPACE(sizeof(int))] = {};
  efuse_intercept_prepare(&msg, &iov, &reply, sizeof reply, nullptr, -1);
  msg.msg_control = rcontrol;
  msg.msg_controllen = sizeof rcontrol;
  do n = sys(SYS_recvmsg, conn, reinterpret_cast<long>(&msg), cloexec ? MSG_CMSG_CLOEXEC : 0);
  while (n < 0 && errno == EINTR);
  *got = -1;
  struct cmsghdr* c = n > 0 ? CMSG_FIRSTHDR(&msg) : nullptr;
  if (c != nullptr && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
      c->cmsg_len == CMSG_LEN(sizeof(int)))
    memcpy(got, CMSG_DATA(c), sizeof(int));
  if (n != static_cast<long>(sizeof reply) || reply.error != 0) {
    if (*got >= 0) close_quiet(*got);  // never kept along with an error
    *got = -1;
  }
  if (n != static_cast<long>(sizeof reply)) return -2;
  if (reply.error == 0) return 0;
  errno = reply.error > 0 && reply.error < 4096 ? reply.error : EIO;
  return -1;
}

// One request on a connection of its own, tried twice (the second covers a connection
// refused while efused was busy accepting others): round_trip's answer, ENOTCONN when
// efused cannot be reached.
template <typename Exchange>
int ask(Mount* m, Exchange&& exchange) {
  int saved = errno;
  for (int attempt = 0; attempt < 2; ++attempt) {
    long conn = connect_to(m);
    int rc = conn < 0 ? -2 : exchange(conn);
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

}  // namespace

namespace {
// An open request (EFUSE_IREQ_OPEN with `len` bytes of path, or EFUSE_IREQ_OPEN_NODE with
// descriptor `attached`): the descriptor efused passed back, or -1 with errno.
int ask_open(Mount* m, uint32_t op, int flags, const char* rel, size_t len, int attached,
             bool cloexec) {
  efuse_intercept_open req;
  req.head.magic = EFUSE_INTERCEPT_MAGIC;
  req.head.version = EFUSE_INTERCEPT_VERSION;
  req.head.op = op;
  req.flags = static_cast<uint32_t>(flags);
  req.path_len = static_cast<uint32_t>(len);
  memcpy(req.path, rel, len);
  const size_t size = offsetof(efuse_intercept_open, path) + len;
  int fd = -1;
  if (ask(m, [&](long conn) { return round_trip(conn, &req, size, attached, &fd, cloexec); }) != 0)
    return -1;
  if (fd < 0) errno = EIO;  // answered 0 without a descriptor: not efused's protocol
  return fd;
}
}  // namespace

int ask_efused_open(Mount* m, const char* rel, int flags, bool cloexec) {
  size_t len = strlen(rel);
  if (m == nullptr || !m->opens || len == 0 || len >= EFUSE_INTERCEPT_PATH_MAX) {
    errno = EOPNOTSUPP;
    return -1;
  }
  return ask_open(m, EFUSE_IREQ_OPEN, flags, rel, len, -1, cloexec);
}

int ask_efused_node(Mount* m, int opath, int flags, bool cloexec) {
  if (m == nullptr || !m->nodes) {
    errno = EOPNOTSUPP;
    return -1;
  }
  return ask_open(m, EFUSE_IREQ_OPEN_NODE, flags, "", 0, opath, cloexec);
}

int ask_efused(Mount* m, uint32_t op, int fd) {
  if (m == nullptr || !m->writes) {
    errno = EOPNOTSUPP;
    return -1;
  }
  efuse_intercept_request req;
  req.magic = EFUSE_INTERCEPT_MAGIC;
  req.version = EFUSE_INTERCEPT_VERSION;
  req.op = op;
  int none = -1;
  return ask(m, [&](long conn) { return round_trip(conn, &req, sizeof req, fd, &none, false); });
}

}  // namespace efuse::intercept
