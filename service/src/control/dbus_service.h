// The org.efuse.Manager1 object (see dbus_api.h) on an sd-bus connection, served from its
// own thread. The object only translates: every method calls the Manager.
//
// Threading: after start() the bus belongs to the bus thread (sd-bus objects are not
// thread-safe); the caller must not use it until stop() returns. Method handlers run on the
// bus thread and may block in the Manager (Reload waits until applied). The Manager's state
// listener may fire on any thread; events are queued and the signals sent from the bus
// thread.
//
// Lifetime: the Manager must outlive the DbusService, or at least its stop(). stop() must
// not be called from a Manager method invoked by this service (it joins the bus thread).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#include "common/result.h"
#include "control/bus.h"
#include "control/manager.h"
#include "control/signal_queue.h"

namespace efuse::control {

class DbusService {
 public:
  // Takes over the connection (an sd-bus client connection, e.g. from open_bus()).
  DbusService(Manager& manager, BusPtr bus);
  // Takes its own reference on bus. sd-bus reference counts are not atomic: the caller must
  // drop its reference before start() or after stop(), never while the bus thread runs.
  // Prefer the BusPtr constructor.
  DbusService(Manager& manager, sd_bus* bus);
  ~DbusService();  // stop()
  DbusService(const DbusService&) = delete;
  DbusService& operator=(const DbusService&) = delete;

  // Exports the object, takes the well-known name org.efuse.Manager1 (EEXIST when another
  // connection owns it, EACCES when the bus policy forbids it) and starts the bus thread.
  // On failure *error says why and nothing is left registered.
  Status start(std::string* error);
  // Stops serving: releases the name, joins the bus thread. Idempotent.
  void stop() noexcept;
  // Whether the bus thread's event loop runs: from start() until stop(), or until the
  // connection to the bus is lost (the loop then ends by itself, logged).
  bool serving() const { return serving_.load(); }

  // For tests: callers with this effective uid may call the mutating methods (default 0).
  void set_privileged_uid_for_testing(uid_t uid) { privileged_uid_.store(uid); }

 private:
  struct Handlers;  // the vtable's C callbacks (dbus_handlers.cpp)
  friend struct Handlers;
  static const sd_bus_vtable* vtable();

  Status setup(std::string* error);
  void teardown() noexcept;
  void run() noexcept;
  static int wakeup_cb(sd_event_source* source, int fd, uint32_t events,
                       void* userdata) noexcept;
  int on_wakeup();
  // Bus thread: sends the queued MountStateChanged signals, then PropertiesChanged for
  // MountCount when it moved. Also called by the mutating methods before they reply, so a
  // caller has been sent the signals its call caused by the time it gets the reply.
  void emit_state_changes();
  void emit_mount_count_if_changed();
  uint32_t current_mount_count() const;

  Manager& manager_;
  sd_bus* bus_;  // one reference, ours
  sd_event* event_ = nullptr;
  sd_bus_slot* object_slot_ = nullptr;
  sd_event_source* wakeup_source_ = nullptr;
  std::shared_ptr<SignalQueue> queue_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> serving_{false};
  bool started_ = false;
  bool listener_set_ = false;
  bool name_owned_ = false;
  std::atomic<uid_t> privileged_uid_{0};
  uint32_t last_mount_count_ = 0;  // bus thread: the MountCount clients last heard of
};

}  // namespace efuse::control
