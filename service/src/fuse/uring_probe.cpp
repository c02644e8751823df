// io_uring channel: may this kernel and process serve FUSE over io_uring (supported()),
// and switching a connection back to /dev/fuse (drop_kernel_uring()).
#include "fuse/uring_channel.h"

#include <fcntl.h>
#include <liburing.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <fstream>

#include "common/log.h"
#include "common/system.h"
#include "fuse/uring_internal.h"

namespace fuse {

namespace k = kernel;
using namespace uring_detail;

using efuse::errno_text;
using efuse::seccomp_filtered;

namespace {

int read_first_byte(const char* path, char* out, const char** step) {
  *step = "opening";
  efuse::UniqueFd fd(::open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) return errno;
  *step = "reading";
  ssize_t n = ::read(fd.get(), out, 1);
  return n == 1 ? 0 : n < 0 ? errno : EIO;
}

}  // namespace

namespace uring_detail {

std::string enable_uring_state() {
  char v = 0;
  const char* step = nullptr;
  int err = read_first_byte(k::kEnableUringParam, &v, &step);
  if (err != 0)
    return std::string(step) + " " + k::kEnableUringParam + " failed: " + errno_text(err);
  if (v == 'Y' || v == 'y' || v == '1') return "";
  return std::string(k::kEnableUringParam) + " is " + v;
}

}  // namespace uring_detail

efuse::Status UringChannel::drop_kernel_uring(int dev_fd, std::string* why) {
  struct io_uring ring {};
  struct io_uring_params p {};
  p.flags = IORING_SETUP_SQE128;
  int rc = io_uring_queue_init_params(2, &ring, &p);
  if (rc < 0) {
    *why = std::string("io_uring_setup failed: ") + strerror(-rc);
    return efuse::Errno{-rc};
  }
  // A REGISTER naming a queue that cannot exist: the kernel answers EINVAL and, as for any
  // failed registration, stops waiting for rings (fc->io_uring = 0).
  struct io_uring_sqe* s = io_uring_get_sqe(&ring);
  if (s == nullptr) {
    io_uring_queue_exit(&ring);
    *why = "no SQE on a fresh io_uring";
    return efuse::Errno{EIO};
  }
  prep_uring_cmd(s, dev_fd, k::UringCmd::Register, 0xffff, 0, 0);
  LOG_INFO("asking the kernel to serve this FUSE connection over /dev/fuse (a deliberately "
           "invalid io_uring REGISTER; the kernel may log 'Invalid ring qid 65535')");
  rc = io_uring_submit_and_wait(&ring, 1);
  int res = 0;
  struct io_uring_cqe* cqe = nullptr;
  if (rc >= 0 && io_uring_peek_cqe(&ring, &cqe) == 0 && cqe != nullptr) {
    res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
  } else {
    res = rc < 0 ? rc : -EIO;
  }
  io_uring_queue_exit(&ring);
  if (res == -EINVAL || res == -EOPNOTSUPP) return {};  // dropped / io_uring already off
  *why = res == 0 ? std::string("the kernel accepted an invalid REGISTER")
                  : std::string("REGISTER answered ") + strerror(-res);
  return efuse::Errno{res < 0 ? -res : EIO};
}
efuse::Status UringChannel::supported(std::string* why) {
  const char* param = k::kEnableUringParam;
  char v = 0;
  const char* step = nullptr;
  int err = read_first_byte(param, &v, &step);
  if (err == ENOENT && access("/sys/module/fuse", F_OK) != 0 && access("/sys/module", F_OK) == 0) {
    // FUSE built as a module that is not loaded yet: opening /dev/fuse loads it.
    efuse::UniqueFd load(::open("/dev/fuse", O_RDWR | O_CLOEXEC));
    err = read_first_byte(param, &v, &step);
  }
  if (err == ENOENT && access("/sys/module/fuse/parameters", F_OK) == 0) {
    // The fuse module's parameter directory is there, without enable_uring: a kernel built
    // without it.
    *why = std::string("this kernel's FUSE has no io_uring support (") + param +
           " does not exist; FUSE over io_uring needs Linux 6.14 or later built with "
           "CONFIG_FUSE_IO_URING)";
    return efuse::Errno{EOPNOTSUPP};
  }
  if (err != 0) {
    // Cannot check (a container's /sys without module/, or a read error): the kernel still
    // decides at INIT, and start() falls back to /dev/fuse if it does not offer io_uring.
    static std::atomic<bool> logged{false};
    if (!logged.exchange(true)) {
      std::string hint;
      if (err == ENOENT)
        hint = access("/sys/module", F_OK) != 0
                   ? "; /sys/module is not visible here (a container? bind the host's "
                     "read-only, e.g. systemd-nspawn --bind-ro=/sys/module)"
                   : "; /sys/module/fuse does not exist (no FUSE in this kernel, or a "
                     "container's /sys without the host's modules)";
      LOG_INFO("cannot check whether FUSE may use io_uring: %s %s failed: %s%s; asking the "
               "kernel at INIT", step, param, errno_text(err).c_str(), hint.c_str());
    }
  } else if (v != 'Y' && v != 'y' && v != '1') {
    if (geteuid() != 0) {
      *why = std::string("FUSE over io_uring is off (") + param + " is " + v +
             ") and only root can turn it on (echo Y > " + param + ")";
      return efuse::Errno{EPERM};
    }
    const char* what = "opening it for writing";
    efuse::UniqueFd fd(::open(param, O_WRONLY | O_CLOEXEC));
    err = fd ? 0 : errno;
    if (fd) {
      what = "writing Y to it";
      ssize_t n = ::write(fd.get(), "Y", 1);
      err = n == 1 ? 0 : n < 0 ? errno : EIO;
    }
    if (err != 0) {
      *why = std::string("FUSE over io_uring is off (") + param + " is " + v +
             ") and efused cannot turn it on: " + what + " failed: " + errno_text(err);
      if (err == EROFS)
        *why += "; /sys is read-only here (a container?): turn it on where /sys is writable, "
                "e.g. on the host: echo Y > " + std::string(param);
      return efuse::Errno{err};
    }
    LOG_INFO("FUSE over io_uring was off; efused turned it on (wrote Y to %s)", param);
  }
  struct io_uring ring {};
  struct io_uring_params p {};
  p.flags = IORING_SETUP_SQE128;
  int rc = io_uring_queue_init_params(2, &ring, &p);
  if (rc < 0) {
    *why = std::string("io_uring_setup with 128-byte SQEs failed: ") + errno_text(-rc);
    std::ifstream f("/proc/sys/kernel/io_uring_disabled");
    int disabled = 0;
    if (f >> disabled && disabled != 0)
      *why += " (kernel.io_uring_disabled = " + std::to_string(disabled) + ")";
    else if (rc == -EPERM && seccomp_filtered())
      *why += " (a seccomp filter is active, e.g. systemd-nspawn's default or SystemCallFilter=: "
              "allow io_uring_setup, io_uring_enter and io_uring_register)";
    return efuse::Errno{-rc};
  }
  io_uring_queue_exit(&ring);
  return {};
}

}  // namespace fuse
