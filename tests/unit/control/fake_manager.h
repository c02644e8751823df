// A control::Manager that records calls and returns what the test set up.
#pragma once

#include <cerrno>
#include <chrono>
#include <thread>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "control/manager.h"

namespace efuse::control::testing {

class FakeManager : public Manager {
 public:
  // Canned answers (set before the call; read on the bus thread under mu_).
  struct Canned {
    nlohmann::json mounts = nlohmann::json::array(
        {{{"name", "a"}, {"state", "mounted"}, {"mountpoint", "/mnt/a"},
          {"transport", "classic"}, {"error", ""}},
         {{"name", "b"}, {"state", "failed"}, {"mountpoint", "/mnt/b"},
          {"transport", ""}, {"error", "mountpoint /mnt/b: No such file or directory"}}});
    size_t count = 2;
    int mount_errno = 0;
    int unmount_errno = 0;
    int reload_errno = 0;
    std::string detail;          // *error text for failing calls
    bool throw_in_list = false;  // list_mounts throws std::runtime_error
    bool bad_alloc_in_list = false;
    int reload_delay_ms = 0;     // reload blocks this long (as a real reload may)
    int handler_errno = 0;       // ListHandlers, SwapHandler, RemoveHandler
    nlohmann::json handlers = nlohmann::json::array(
        {{{"opcode", "lookup"}, {"loaded", true}, {"prog_id", 7}, {"path", "/h/l.bpf.o"}}});
  };

  void set(const Canned& canned) {
    std::lock_guard lock(mu_);
    canned_ = canned;
  }
  Canned canned() const {
    std::lock_guard lock(mu_);
    return canned_;
  }
  std::vector<std::string> calls() const {
    std::lock_guard lock(mu_);
    return calls_;
  }
  bool has_listener() const {
    std::lock_guard lock(mu_);
    return static_cast<bool>(listener_);
  }
  StateListener listener() const {
    std::lock_guard lock(mu_);
    return listener_;
  }
  // As the Supervisor would, from the calling thread.
  void fire(const std::string& name, const std::string& state) {
    StateListener l = listener();
    if (l) l(name, state);
  }
  // Changes the count and announces a state change, as a reload would.
  void set_count(size_t count) {
    std::lock_guard lock(mu_);
    canned_.count = count;
  }

  std::string version() const override { return "9.8.7-test"; }
  nlohmann::json daemon_status() const override {
    return {{"metrics", {{"listen", "127.0.0.1:1"}, {"url", ""}, {"error", "test error"}}}};
  }
  nlohmann::json telemetry() const override {
    return {{"configured", "full"}, {"level", "full"}, {"up", true}, {"reason", ""}, {"off", ""}};
  }
  size_t mount_count() const override { return canned().count; }

  nlohmann::json list_mounts() const override {
    const Canned c = canned();
    record("ListMounts");
    if (c.throw_in_list) throw std::runtime_error("list exploded");
    if (c.bad_alloc_in_list) throw std::bad_alloc();
    return c.mounts;
  }

  Result<nlohmann::json> get_mount(const std::string& name) const override {
    record("GetMount " + name);
    for (const auto& m : canned().mounts) {
      if (m.value("name", "") == name) return m;
    }
    return Errno{ENOENT};
  }

  Status mount(const std::string& name, std::string* error) override {
    record("Mount " + name);
    return answer(canned().mount_errno, error);
  }
  Status unmount(const std::string& name, std::string* error) override {
    record("Unmount " + name);
    return answer(canned().unmount_errno, error);
  }
  Status reload(std::string* error) override {
    record("Reload");
    const int delay = canned().reload_delay_ms;
    if (delay > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay));
    return answer(canned().reload_errno, error);
  }

  Result<nlohmann::json> list_handlers(const std::string& name,
                                       std::string* error) const override {
    record("ListHandlers " + name);
    if (int err = canned().handler_errno) {
      *error = canned().detail;
      return Errno{err};
    }
    return canned().handlers;
  }
  Status swap_handler(const std::string& name, const std::string& opcode,
                      const std::string& path, std::string* error) override {
    record("SwapHandler " + name + " " + opcode + " " + path);
    return answer(canned().handler_errno, error);
  }
  Status remove_handler(const std::string& name, const std::string& opcode,
                        std::string* error) override {
    record("RemoveHandler " + name + " " + opcode);
    return answer(canned().handler_errno, error);
  }

  void set_state_listener(StateListener listener) override {
    std::lock_guard lock(mu_);
    listener_ = std::move(listener);
  }

 private:
  void record(const std::string& call) const {
    std::lock_guard lock(mu_);
    calls_.push_back(call);
  }
  Status answer(int err, std::string* error) const {
    if (err == 0) return {};
    *error = canned().detail;
    return Errno{err};
  }

  mutable std::mutex mu_;
  Canned canned_;
  mutable std::vector<std::string> calls_;
  StateListener listener_;
};

}  // namespace efuse::control::testing
