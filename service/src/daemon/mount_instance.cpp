#include "daemon/mount_instance.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <system_error>

#include "common/log.h"
#include "fs/passthrough/passthrough_fs.h"

namespace efuse::daemon {

static bool inside(const std::string& path, const std::string& dir) {
  if (dir == "/") return true;
  return path == dir || (path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 &&
                         path[dir.size()] == '/');
}

std::string validate(const MountSpec& s) {
  struct stat st;
  if (stat(s.source.c_str(), &st) != 0)
    return "source " + s.source + ": " + strerror(errno);
  if (!S_ISDIR(st.st_mode)) return "source " + s.source + " is not a directory";
  if (stat(s.mountpoint.c_str(), &st) != 0) {
    // ENOTCONN: a dead FUSE mount left there; start() detaches it.
    if (errno != ENOTCONN) return "mountpoint " + s.mountpoint + ": " + strerror(errno);
  } else if (!S_ISDIR(st.st_mode)) {
    return "mountpoint " + s.mountpoint + " is not a directory";
  }
  if (inside(s.mountpoint, s.source))
    return "mountpoint " + s.mountpoint + " lies inside source " + s.source +
           " (efused would serve its own mount)";
  if (inside(s.source, s.mountpoint))
    return "source " + s.source + " lies inside mountpoint " + s.mountpoint +
           " (efused would serve its own mount)";
  if (s.threads == 0 || s.threads > 256) return "threads must be between 1 and 256";
  return {};
}

MountInstance::MountInstance(MountSpec spec) : spec_(std::move(spec)) {}

MountInstance::~MountInstance() {
  stop();
  if (channel_ && !channel_->stopped()) {
    // Workers still blocked on a connection that could not be aborted: they reference the
    // session and backend, so those must outlive them. Only reached on the way out.
    (void)channel_.release();
    (void)session_.release();
    (void)fs_.release();
  }
}

Status MountInstance::start(std::string* error) {
  fs::passthrough::Options po;
  po.source = spec_.source;
  po.entry_timeout = spec_.entry_timeout;
  po.attr_timeout = spec_.attr_timeout;
  po.passthrough_io = spec_.passthrough_io;
  try {
    fs_ = std::make_unique<fs::passthrough::PassthroughFs>(po);
  } catch (const std::system_error& e) {
    *error = e.what();
    return Errno{e.code().value()};
  }
  fuse::SessionOptions so;
  so.entry_timeout = spec_.entry_timeout;
  so.attr_timeout = spec_.attr_timeout;
  so.writeback_cache = spec_.writeback_cache;
  // FUSE passthrough needs CAP_SYS_ADMIN in the initial user namespace.
  so.passthrough = spec_.passthrough_io && geteuid() == 0;
  session_ = std::make_unique<fuse::Session>(*fs_, so);

  fuse::detach_stale(spec_.mountpoint);
  fuse::MountOptions mo;
  mo.fsname = spec_.source;
  mo.mountpoint = spec_.mountpoint;
  mo.allow_other = spec_.allow_other;
  mo.default_permissions = spec_.default_permissions;
  mo.read_only = spec_.read_only;
  auto m = fuse::mount(mo, error);
  if (!m.ok()) return Errno{m.error()};
  mounted_ = *m;
  mounted_now_ = true;

  channel_ = std::make_unique<fuse::ClassicChannel>(*session_, mounted_.fd, spec_.threads);
  Status s = channel_->serve_init(error);
  if (s.ok()) s = channel_->start(error);
  if (!s.ok()) {
    stop(0);
    return s;
  }
  return {};
}

bool MountInstance::lost() const { return mounted_now_ && channel_ && channel_->stopped(); }

void MountInstance::stop(int grace_ms) {
  if (!mounted_now_) return;
  mounted_now_ = false;
  auto how = fuse::unmount(spec_.mountpoint, mounted_.via_fusermount);
  if (how.ok())
    LOG_INFO("%s %s", *how, spec_.mountpoint.c_str());
  else if (how.error() != EINVAL && how.error() != ENOENT)  // EINVAL: no longer mounted
    LOG_WARN("unmounting %s failed: %s", spec_.mountpoint.c_str(), strerror(how.error()));
  if (channel_ && !channel_->wait(grace_ms)) {
    // Detached but still in use: end the connection so the workers stop; the clients'
    // open files fail with ENOTCONN from now on.
    if (fuse::abort_connection(mounted_.conn_id)) {
      LOG_WARN("%s was still in use after %d ms; connection aborted", spec_.mountpoint.c_str(),
               grace_ms);
    } else {
      LOG_WARN("%s is still in use; cannot abort connection %u", spec_.mountpoint.c_str(),
               mounted_.conn_id);
    }
    channel_->wait(grace_ms);
  }
  if (channel_ && channel_->stopped()) channel_.reset();  // joins, closes the fds
}

}  // namespace efuse::daemon
