// MountInstance: restart without remounting (mount_instance.h, daemon/fd_store.h).
//
// While a mount is live under systemd, the store holds its connection's /dev/fuse
// descriptors and a state file the backend and the session keep current (nodeids with their
// lookup counts and file handles, open file handles, passthrough backing ids, INIT's
// outcome). A new efused finds them, checks that they belong to the same mount and
// configuration and to the connection still mounted there, rebuilds the tables and serves
// the connection again without INIT; requests the previous efused had read but not
// answered (it was killed) are sent again by the kernel (FUSE_NOTIFY_RESEND, Linux 6.9+).
// Clients see a pause. Anything that does not add up is logged, and the mount starts fresh.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/uio.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "common/log.h"
#include "daemon/mount_instance.h"
#include "fs/registry.h"
#include "fuse/kernel.h"

namespace efuse::daemon {

namespace {

// The daemon's record in the state's meta area, after the session's (256 bytes).
struct DaemonMeta {
  uint32_t magic;
  uint32_t conn_id;
  uint64_t identity;  // identity() of the configuration it was mounted with
  uint64_t resumes;   // times a new efused resumed the connection
};
constexpr uint32_t kDaemonMagic = 0x4d444645;  // "EFDM"
constexpr size_t kDaemonMetaOffset = 256;

DaemonMeta* meta_of(const SlotFile& f) {
  return reinterpret_cast<DaemonMeta*>(f.meta() + kDaemonMetaOffset);
}

// What a mount must have in common with the one recorded to take over its connection: the
// settings a reload remounts for (needs_remount), as a 64-bit FNV-1a hash.
uint64_t identity(const MountConfig& c) {
  std::ostringstream s;
  s << c.mountpoint << '\0' << c.backend << '\0' << c.source << '\0' << c.threads << '\0'
    << c.queue_depth << '\0' << to_string(c.transport) << '\0' << c.options.allow_other
    << c.options.default_permissions << c.options.read_only << c.options.stack << '\0'
    << c.cache.writeback << '\0';
  if (!c.options.xattr) s << "noxattr" << '\0';  // only then: the identity of older states stays
  uint64_t h = 1469598103934665603ULL;
  for (unsigned char ch : s.str()) {
    h ^= ch;
    h *= 1099511628211ULL;
  }
  return h;
}

// The FUSE connection a /dev/fuse descriptor belongs to (/proc/self/fdinfo), 0 if unknown.
unsigned connection_of(int fd) {
  std::ifstream f("/proc/self/fdinfo/" + std::to_string(fd));
  std::string line;
  while (std::getline(f, line))
    if (line.starts_with("fuse_connection:")) return static_cast<unsigned>(std::stoul(line.substr(16)));
  return 0;
}

}  // namespace

void MountInstance::begin_recording() {
  resume_note_.clear();
  if (store_ == nullptr || !store_->enabled()) return;
  auto file = SlotFile::create("efuse-state-" + cfg_.name);
  if (!file.ok()) {
    resume_note_ = std::string("cannot create the restart state: ") + strerror(file.error());
  } else if (!fs_->record_state(file->get())) {
    resume_note_ = "the " + cfg_.backend + " backend cannot record its state for a restart "
                   "(passthrough needs file handles on the source; a memory mount's contents "
                   "live in efused)";
  }
  if (!resume_note_.empty()) {
    LOG_WARN("%s: a restart of efused will remount it (clients get ENOTCONN): %s",
             cfg_.name.c_str(), resume_note_.c_str());
    return;
  }
  state_ = std::move(*file);
  session_->record_state(state_.get());
}

void MountInstance::store_descriptors(bool with_conn) {
  if (!state_ || !channel_) return;
  if (session_->negotiated().has(fuse::kernel::init::kOverIoUring)) {
    // The rings die with efused, and the kernel cannot take a request back from a ring
    // entry of a dying ring: it ends one it had just handed to the entry with ECANCELED and
    // never answers one the entry held (its caller waits until the mount goes; both seen on
    // Linux 6.18 under load). Nor can the connection go back to /dev/fuse once its rings
    // ran. So a connection on io_uring is not kept: a restart remounts it, as a stop does.
    resume_note_ = "FUSE over io_uring: its rings cannot be handed to the next efused "
                   "without losing requests; set transport: classic to keep this mount "
                   "across restarts";
    LOG_INFO("%s: a restart of efused will remount it (%s)", cfg_.name.c_str(),
             resume_note_.c_str());
    return;
  }
  if (module_tier_) {
    // Not tried yet: the handlers and their maps belong to the process that attached them,
    // and a resume through /dev/efuse has not been tested in the guests. (A resume would
    // have to start with empty maps: the next efused cannot know that a directory marked
    // complete saw no change while no efused watched it, fuse/kernel_answers.h.)
    resume_note_ = "kernel module tier: a restart remounts it (resuming a /dev/efuse "
                   "connection is not supported yet)";
    LOG_INFO("%s: a restart of efused will remount it (%s)", cfg_.name.c_str(),
             resume_note_.c_str());
    return;
  }
  DaemonMeta* m = meta_of(*state_);
  if (with_conn) {
    m->conn_id = mounted_.conn_id;
    m->identity = identity(cfg_);
    m->resumes = 0;
    m->magic = kDaemonMagic;
  }
  // Workers the channel grows later bring clones of their own: the store keeps those too,
  // as they are made (before device_fds(), so that none falls between the two).
  channel_->set_device_fd_listener([store = store_, name = cfg_.name](int fd) {
    Status st = store->store(name, "clone", {fd});
    if (!st.ok())
      LOG_WARN("%s: systemd did not take a new worker's /dev/fuse descriptor (%s): requests "
               "that worker holds when efused is killed fail instead of waiting for the next "
               "efused", name.c_str(), strerror(st.error()));
  });
  std::vector<int> devs = channel_->device_fds();
  std::vector<int> clones(devs.begin() + 1, devs.end());
  Status s = with_conn ? store_->store(cfg_.name, "state", {state_->fd()}) : Status();
  if (s.ok() && with_conn) s = store_->store(cfg_.name, "conn", {conn_->fd()});
  if (s.ok()) s = store_->store(cfg_.name, "clone", clones);
  if (!s.ok()) {
    resume_note_ = std::string("systemd did not take its descriptors: ") + strerror(s.error());
    LOG_WARN("%s: a restart of efused will remount it: %s", cfg_.name.c_str(),
             resume_note_.c_str());
  }
}

uint64_t MountInstance::resumes() const {
  if (!state_) return 0;
  const DaemonMeta* m = meta_of(*state_);
  return m->magic == kDaemonMagic ? m->resumes : 0;
}

Status MountInstance::resume(FdStore::Mount& fds, std::string* error) {
  if (mounted_now_) return Errno{EALREADY};
  if (!fds.conn || !fds.state) {
    *error = std::string("the store holds no ") + (fds.conn ? "state" : "connection");
    return Errno{ENOENT};
  }
  std::string why;
  auto adopted = SlotFile::adopt(UniqueFd(fcntl(fds.state.get(), F_DUPFD_CLOEXEC, 3)), &why);
  if (!adopted.ok()) {
    *error = "the restart state is unusable: " + why;
    return Errno{EINVAL};
  }
  std::unique_ptr<SlotFile> file = std::move(*adopted);
  const DaemonMeta* m = meta_of(*file);
  if (m->magic != kDaemonMagic) {
    *error = "the restart state is unusable: it names no mount";
    return Errno{EINVAL};
  }
  if (m->identity != identity(cfg_)) {
    *error = "its configuration changed in a way that needs a remount (mountpoint, source, "
             "backend, threads, queue_depth, transport, options or cache.writeback)";
    return Errno{ESTALE};
  }
  if (file->incomplete()) {
    *error = "the restart state is incomplete (more inodes and open files than it holds, or "
             "an inode without a file handle)";
    return Errno{EOVERFLOW};
  }
  unsigned conn = connection_of(fds.conn.get());
  auto at = fuse::fuse_mount_at(cfg_.mountpoint);
  if (conn == 0 || conn != m->conn_id || !at || at->conn_id != conn) {
    *error = "the stored connection " + std::to_string(m->conn_id) +
             (conn != m->conn_id ? " is not the stored descriptor's (" + std::to_string(conn) + ")"
              : !at ? " is no longer mounted at " + cfg_.mountpoint
                    : " is not the one mounted at " + cfg_.mountpoint + " (" +
                          std::to_string(at->conn_id) + ")");
    return Errno{ESTALE};
  }
  if (!fs::backend_known(cfg_.backend)) {
    *error = "backend '" + cfg_.backend + "' is not available";
    return Errno{EINVAL};
  }
  bool want_uring = false;  // a resumed connection keeps what INIT settled
  Status s = prepare(&want_uring, error);
  auto fail = [&](const std::string& what, Status st) {
    *error = what;
    channel_.reset();
    conn_.reset();
    session_.reset();
    fs_.reset();
    return st;
  };
  if (!s.ok()) return fail(*error, s);
  if (s = fs_->restore_state(file.get(), &why); !s.ok())
    return fail("the restart state is unusable: " + why, s);
  if (s = session_->restore_state(file.get(), &why); !s.ok())
    return fail("the restart state is unusable: " + why, s);
  if (session_->negotiated().has(fuse::kernel::init::kOverIoUring))
    return fail("the connection runs FUSE over io_uring, whose rings cannot be resumed",
                Errno{EOPNOTSUPP});
  UniqueFd dev(fcntl(fds.conn.get(), F_DUPFD_CLOEXEC, 3));
  if (!dev) return fail(std::string("dup: ") + strerror(errno), last_errno());
  conn_ = std::make_unique<fuse::Connection>(std::move(dev));
  channel_ = std::make_unique<fuse::ClassicChannel>(*session_, *conn_, cfg_.threads,
                                                    cfg_.workers_max());
  if (s = channel_->resume(error); !s.ok()) {
    // Threads may be serving already: the connection must end before they can be joined.
    return fail("cannot serve the connection again: " + *error, s);
  }
  fds.conn.reset();  // conn_ has its own descriptor of it
  fds.state.reset();
  mounted_.fd = conn_->fd();
  mounted_.conn_id = conn;
  mounted_.via_fusermount = false;
  mounted_now_ = true;
  state_ = std::move(file);
  // Requests the previous efused had read and not answered (killed) sit in the processing
  // queues of its /dev/fuse descriptors, which the store kept: the kernel sends them again.
  fuse::kernel::fuse_out_header oh{sizeof oh, static_cast<int32_t>(fuse::kernel::NotifyCode::Resend), 0};
  struct iovec iov{&oh, sizeof oh};
  int rc = conn_->notify(&iov, 1);
  if (rc < 0)
    LOG_WARN("%s: FUSE_NOTIFY_RESEND failed (%s): requests the previous efused had not "
             "answered stay unanswered", cfg_.name.c_str(), strerror(-rc));
  // The previous efused's clones: out of the store, then closed (their queues are empty now).
  store_->remove(cfg_.name, "clone");
  fds.clones.clear();
  store_descriptors(false);
  fs_->set_invalidator(this);
  note_passthrough();
  if (cfg_.intercept) intercept_.publish(cfg_, mounted_.conn_id, fs_.get());  // this efused's PID now
  DaemonMeta* dm = meta_of(*state_);
  dm->resumes += 1;
  state_->mark_clean(false);
  LOG_INFO("%s: resumed FUSE connection %u at %s (%s, resume %llu): no remount, open files "
           "keep working",
           cfg_.name.c_str(), conn, cfg_.mountpoint.c_str(), channel_->transport(),
           static_cast<unsigned long long>(dm->resumes));
  return {};
}

void MountInstance::abandon(const std::string& name, const std::string& mountpoint,
                            FdStore::Mount fds, const FdStore* store) {
  if (fds.conn) {
    unsigned conn = connection_of(fds.conn.get());
    std::string at = mountpoint.empty() && conn != 0 ? fuse::mountpoint_of(conn) : mountpoint;
    auto top = at.empty() ? std::nullopt : fuse::fuse_mount_at(at);
    if (conn != 0 && top && top->conn_id == conn) {
      auto how = fuse::unmount(at, false);
      LOG_INFO("%s: %s the previous efused's mount at %s", name.c_str(),
               how.ok() ? *how : "could not unmount", at.c_str());
    }
    // Clients still holding it get ENOTCONN, as after a stop.
    if (conn != 0) fuse::abort_connection(conn);
  }
  if (store != nullptr) store->remove_all(name);
}

void MountInstance::detach_for_restart() {
  if (!mounted_now_) return;
  if (!state_ || !resume_note_.empty()) return stop();
  mounted_now_ = false;
  intercept_.leave_for_restart();  // the next efused publishes the mount again
  fs_->set_invalidator(nullptr);
  session_->keep_for_restart();
  if (channel_ && !channel_->stop_for_restart(5000))
    LOG_WARN("%s: a worker did not stop within 5 s for the restart", cfg_.name.c_str());
  state_->mark_clean(true);
  LOG_INFO("%s: left FUSE connection %u mounted at %s for the next efused", cfg_.name.c_str(),
           mounted_.conn_id, cfg_.mountpoint.c_str());
  channel_.reset();
  conn_.reset();  // systemd's copy keeps the connection
  // state_ stays mapped while the backend and session live: they point into it.
}

}  // namespace efuse::daemon
