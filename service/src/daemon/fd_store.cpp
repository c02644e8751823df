#include "daemon/fd_store.h"

#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-login.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#include "common/log.h"

namespace efuse::daemon {

namespace {
constexpr const char* kPrefix = "efuse.";

std::string fd_name(const std::string& mount, const char* kind) {
  return std::string(kPrefix) + mount + "." + kind;
}
}  // namespace

FdStore::FdStore() {
  const char* off = std::getenv("EFUSE_FDSTORE");
  enabled_ = std::getenv("NOTIFY_SOCKET") != nullptr && !(off != nullptr && std::strcmp(off, "0") == 0);
  char** names = nullptr;
  int n = sd_listen_fds_with_names(1, &names);
  for (int i = 0; i < n; ++i) {
    UniqueFd fd(SD_LISTEN_FDS_START + i);
    std::string name = names != nullptr && names[i] != nullptr ? names[i] : "";
    // efuse.NAME.KIND, NAME itself may contain dots.
    size_t dot = name.rfind('.');
    if (!name.starts_with(kPrefix) || dot == std::string::npos || dot <= std::strlen(kPrefix)) {
      ++unknown_;
      continue;  // closed
    }
    std::string mount = name.substr(std::strlen(kPrefix), dot - std::strlen(kPrefix));
    std::string kind = name.substr(dot + 1);
    Mount& m = inherited_[mount];
    if (kind == "conn" && !m.conn) {
      m.conn = std::move(fd);
    } else if (kind == "state" && !m.state) {
      m.state = std::move(fd);
    } else if (kind == "clone") {
      m.clones.push_back(std::move(fd));
    } else {
      ++unknown_;
    }
  }
  if (names != nullptr) {
    for (int i = 0; i < n; ++i) free(names[i]);
    free(names);
  }
  if (n > 0)
    LOG_INFO("systemd passed %d stored descriptor(s) of %zu mount(s) from the previous efused", n,
             inherited_.size());
  if (unknown_ > 0)
    LOG_WARN("closed %zu stored descriptor(s) with names efused does not know", unknown_);
}

FdStore::Mount FdStore::take(const std::string& name) {
  auto it = inherited_.find(name);
  if (it == inherited_.end()) return {};
  Mount m = std::move(it->second);
  inherited_.erase(it);
  return m;
}

std::vector<std::string> FdStore::leftover() const {
  std::vector<std::string> out;
  for (const auto& [name, m] : inherited_) out.push_back(name);
  return out;
}

Status FdStore::store(const std::string& mount, const char* kind, const std::vector<int>& fds) const {
  if (!enabled_ || fds.empty()) return {};
  std::string msg = "FDSTORE=1\nFDNAME=" + fd_name(mount, kind);
  int rc = sd_pid_notify_with_fds(0, 0, msg.c_str(), fds.data(), static_cast<unsigned>(fds.size()));
  if (rc <= 0) return Errno{rc < 0 ? -rc : ENOTCONN};
  return {};
}

void FdStore::remove(const std::string& mount, const char* kind) const {
  if (!enabled_) return;
  std::string msg = "FDSTOREREMOVE=1\nFDNAME=" + fd_name(mount, kind);
  (void)sd_notify(0, msg.c_str());
}

void FdStore::remove_all(const std::string& mount) const {
  for (const char* kind : {"conn", "clone", "state"}) remove(mount, kind);
}

bool restart_pending(std::string* what) {
  char* unit = nullptr;
  if (sd_pid_get_unit(0, &unit) < 0 || unit == nullptr) {
    *what = "not running in a systemd unit";
    return false;
  }
  std::string unit_name = unit;
  free(unit);
  sd_bus* bus = nullptr;
  if (int rc = sd_bus_open_system(&bus); rc < 0) {
    *what = std::string("system bus: ") + strerror(-rc);
    return false;
  }
  bool restart = false;
  sd_bus_error err = SD_BUS_ERROR_NULL;
  sd_bus_message* reply = nullptr;
  const char* unit_path = nullptr;
  int rc = sd_bus_call_method(bus, "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                              "org.freedesktop.systemd1.Manager", "GetUnit", &err, &reply, "s",
                              unit_name.c_str());
  if (rc >= 0) rc = sd_bus_message_read(reply, "o", &unit_path);
  std::string path = rc >= 0 && unit_path != nullptr ? unit_path : "";
  sd_bus_message_unref(reply);
  reply = nullptr;
  uint32_t job_id = 0;
  const char* job_path = nullptr;
  if (rc >= 0) {
    rc = sd_bus_get_property(bus, "org.freedesktop.systemd1", path.c_str(),
                             "org.freedesktop.systemd1.Unit", "Job", &err, &reply, "(uo)");
    if (rc >= 0) rc = sd_bus_message_read(reply, "(uo)", &job_id, &job_path);
  }
  std::string job = rc >= 0 && job_path != nullptr ? job_path : "";
  sd_bus_message_unref(reply);
  char* type = nullptr;
  if (rc >= 0 && job_id != 0)
    rc = sd_bus_get_property_string(bus, "org.freedesktop.systemd1", job.c_str(),
                                    "org.freedesktop.systemd1.Job", "JobType", &err, &type);
  if (rc < 0) {
    *what = std::string("asking systemd about ") + unit_name + ": " +
            (err.message != nullptr ? err.message : strerror(-rc));
  } else if (job_id == 0) {
    *what = unit_name + " has no job (stopped by a signal from outside systemd)";
  } else {
    std::string t = type != nullptr ? type : "";
    *what = unit_name + " job " + std::to_string(job_id) + " is '" + t + "'";
    restart = t == "restart" || t == "try-restart" || t == "reload-or-restart" ||
              t == "reload-or-try-restart";
  }
  free(type);
  sd_bus_error_free(&err);
  sd_bus_flush_close_unref(bus);
  return restart;
}

}  // namespace efuse::daemon
