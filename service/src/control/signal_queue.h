// Hands MountStateChanged events from any thread to the bus thread: a locked queue plus an
// eventfd the bus thread's event loop watches. The same eventfd wakes the loop for stop().
//
// Shared (std::shared_ptr) with the Manager's state listener, so a listener call that races
// with DbusService's destruction still touches a live queue; after close() pushes are
// dropped.
#pragma once

#include <deque>
#include <mutex>
#include <string>
#include <utility>

#include "common/result.h"

namespace efuse::control {

class SignalQueue {
 public:
  struct Event {
    std::string name;
    std::string state;
  };

  SignalQueue() = default;
  ~SignalQueue();
  SignalQueue(const SignalQueue&) = delete;
  SignalQueue& operator=(const SignalQueue&) = delete;

  Status open();  // creates the eventfd
  int fd() const { return fd_; }

  // Any thread. Never throws (a failed allocation drops the event).
  void push(const std::string& name, const std::string& state) noexcept;
  // Any thread: makes fd() readable.
  void wake() noexcept;
  // Bus thread, from the fd's callback: makes fd() unreadable again.
  void clear_wakeup() noexcept;
  // Bus thread: everything queued so far. Leaves the wake-up alone: a stop() request
  // that arrived meanwhile must still wake the loop.
  std::deque<Event> take_all();
  // Drops later pushes.
  void close() noexcept;

 private:
  std::mutex mu_;
  std::deque<Event> events_;
  bool closed_ = false;
  int fd_ = -1;
};

}  // namespace efuse::control
