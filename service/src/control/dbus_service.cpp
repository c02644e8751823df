// DbusService life cycle and the bus thread's event loop. The vtable and its handlers are
// in dbus_handlers.cpp.
#include "control/dbus_service.h"

#include <signal.h>
#include <sys/epoll.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <limits>

#include "common/log.h"
#include "common/process.h"
#include "common/thread_name.h"
#include "control/dbus_api.h"

namespace efuse::control {

namespace {

Status fail(std::string* error, const std::string& what, int r) {
  if (error != nullptr) *error = what + ": " + strerror(-r);
  return Errno{-r};
}

// The PID owning kBusName, 0 when unknown or unowned.
pid_t name_owner(sd_bus* bus) {
  sd_bus_creds* creds = nullptr;
  pid_t pid = 0;
  if (sd_bus_get_name_creds(bus, kBusName, SD_BUS_CREDS_PID, &creds) < 0 ||
      sd_bus_creds_get_pid(creds, &pid) < 0)
    pid = 0;
  sd_bus_creds_unref(creds);
  return pid;
}

bool owner_alive(sd_bus* bus) {
  pid_t pid = name_owner(bus);
  return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

std::string name_error(sd_bus* bus, int r) {
  if (r == -EEXIST) {
    pid_t pid = name_owner(bus);
    std::string owner = pid > 0 ? describe_process(pid) : "another process";
    return std::string("D-Bus name ") + kBusName + " is owned by " + owner +
           " (another efused is running)";
  }
  if (r == -EACCES || r == -EPERM) {
    return std::string("the bus policy does not allow owning ") + kBusName +
           " (is org.efuse.Manager1.conf installed, are we root?)";
  }
  return std::string("cannot own D-Bus name ") + kBusName;
}

}  // namespace

DbusService::DbusService(Manager& manager, BusPtr bus)
    : manager_(manager), bus_(bus.release()), queue_(std::make_shared<SignalQueue>()) {}

DbusService::DbusService(Manager& manager, sd_bus* bus)
    : manager_(manager), bus_(sd_bus_ref(bus)), queue_(std::make_shared<SignalQueue>()) {}

DbusService::~DbusService() {
  stop();
  sd_bus_unref(bus_);
}

Status DbusService::start(std::string* error) {
  if (started_) return fail(error, "D-Bus service already started", -EALREADY);
  started_ = true;
  Status st = setup(error);
  if (!st.ok()) {
    teardown();
    return st;
  }
  last_mount_count_ = current_mount_count();
  serving_ = true;
  thread_ = std::thread([this] { run(); });
  return {};
}

// Object first, name last: once the name is visible the object answers.
Status DbusService::setup(std::string* error) {
  int r;
  if (Status st = queue_->open(); !st.ok()) return fail(error, "eventfd", -st.error());
  if ((r = sd_event_new(&event_)) < 0) return fail(error, "sd_event_new", r);
  r = sd_bus_add_object_vtable(bus_, &object_slot_, kObjectPath, kInterface,
                               vtable(), this);
  if (r < 0) return fail(error, "cannot export D-Bus object", r);
  r = sd_event_add_io(event_, &wakeup_source_, queue_->fd(), EPOLLIN, &DbusService::wakeup_cb,
                      this);
  if (r < 0) return fail(error, "sd_event_add_io", r);
  if ((r = sd_bus_attach_event(bus_, event_, SD_EVENT_PRIORITY_NORMAL)) < 0) {
    return fail(error, "sd_bus_attach_event", r);
  }
  sd_bus_set_exit_on_disconnect(bus_, 1);  // ends the loop (not the process): event attached
  std::shared_ptr<SignalQueue> queue = queue_;
  manager_.set_state_listener([queue](const std::string& name, const std::string& state) {
    queue->push(name, state);
  });
  listener_set_ = true;
  r = sd_bus_request_name(bus_, kBusName, 0);
  // A previous owner that just exited (systemctl restart) keeps the name until the bus
  // daemon has seen its connection close: wait for that, never for a live owner.
  for (int i = 0; r == -EEXIST && i < 50 && !owner_alive(bus_); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    r = sd_bus_request_name(bus_, kBusName, 0);
  }
  if (r < 0) return fail(error, name_error(bus_, r), r);
  name_owned_ = true;
  return {};
}

void DbusService::stop() noexcept {
  if (thread_.joinable() && thread_.get_id() == std::this_thread::get_id()) {
    LOG_ERROR("D-Bus: stop() called from the bus thread (a Manager call); ignored");
    return;
  }
  if (thread_.joinable()) {
    stopping_ = true;
    queue_->wake();
    thread_.join();
  }
  teardown();
}

// Reverse of setup(); runs on the caller's thread once the bus thread is gone.
void DbusService::teardown() noexcept {
  if (listener_set_) {
    try {
      manager_.set_state_listener(nullptr);
    } catch (...) {
      LOG_WARN("D-Bus: clearing the Manager's state listener failed");
    }
    listener_set_ = false;
  }
  queue_->close();  // a listener copy still running elsewhere now pushes into the void
  if (name_owned_) {
    sd_bus_release_name(bus_, kBusName);
    name_owned_ = false;
  }
  object_slot_ = sd_bus_slot_unref(object_slot_);
  sd_bus_flush(bus_);
  sd_bus_set_exit_on_disconnect(bus_, 0);
  sd_bus_detach_event(bus_);
  wakeup_source_ = sd_event_source_unref(wakeup_source_);
  event_ = sd_event_unref(event_);
}

void DbusService::run() noexcept {
  efuse::name_this_thread("efuse-dbus");
  const int r = sd_event_loop(event_);
  if (r < 0) {
    LOG_ERROR("D-Bus: event loop failed: %s", strerror(-r));
  } else if (!stopping_) {
    LOG_ERROR("D-Bus: connection to the bus lost; the control interface is gone");
  }
  serving_ = false;
}

int DbusService::wakeup_cb(sd_event_source*, int, uint32_t, void* userdata) noexcept {
  auto* self = static_cast<DbusService*>(userdata);
  try {
    return self->on_wakeup();
  } catch (const std::exception& e) {
    LOG_ERROR("D-Bus: sending signals failed: %s", e.what());
  } catch (...) {
    LOG_ERROR("D-Bus: sending signals failed");
  }
  return 0;  // keep the loop (a negative return would disable the wake-up source)
}

int DbusService::on_wakeup() {
  queue_->clear_wakeup();  // before reading stopping_: stop() sets it, then wakes
  if (stopping_) return sd_event_exit(event_, 0);
  emit_state_changes();
  emit_mount_count_if_changed();
  return 0;
}

void DbusService::emit_state_changes() {
  for (const SignalQueue::Event& ev : queue_->take_all()) {
    const std::string name = sanitize_utf8(ev.name);
    const std::string state = sanitize_utf8(ev.state);
    const int r = sd_bus_emit_signal(bus_, kObjectPath, kInterface, "MountStateChanged", "ss",
                                     name.c_str(), state.c_str());
    if (r < 0) LOG_WARN("D-Bus: MountStateChanged(%s) not sent: %s", name.c_str(), strerror(-r));
  }
}

uint32_t DbusService::current_mount_count() const {
  const size_t count = manager_.mount_count();
  return static_cast<uint32_t>(std::min<size_t>(count, std::numeric_limits<uint32_t>::max()));
}

void DbusService::emit_mount_count_if_changed() {
  const uint32_t count = current_mount_count();
  if (count == last_mount_count_) return;
  last_mount_count_ = count;
  const int r = sd_bus_emit_properties_changed(bus_, kObjectPath, kInterface, "MountCount",
                                               nullptr);
  if (r < 0) LOG_WARN("D-Bus: PropertiesChanged(MountCount) not sent: %s", strerror(-r));
}

}  // namespace efuse::control
