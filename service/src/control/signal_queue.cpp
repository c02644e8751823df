#include "control/signal_queue.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>

namespace efuse::control {

SignalQueue::~SignalQueue() {
  if (fd_ >= 0) ::close(fd_);
}

Status SignalQueue::open() {
  fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  return check(fd_);
}

void SignalQueue::push(const std::string& name, const std::string& state) noexcept {
  try {
    std::lock_guard lock(mu_);
    if (closed_) return;
    events_.push_back(Event{name, state});
  } catch (...) {
    return;  // out of memory: the signal is lost, the daemon is not
  }
  wake();
}

void SignalQueue::wake() noexcept {
  const uint64_t one = 1;
  // EAGAIN means the counter is already non-zero: the loop will wake anyway.
  [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof one);
}

void SignalQueue::clear_wakeup() noexcept {
  uint64_t count;
  [[maybe_unused]] ssize_t n = ::read(fd_, &count, sizeof count);
}

std::deque<SignalQueue::Event> SignalQueue::take_all() {
  std::lock_guard lock(mu_);
  return std::exchange(events_, {});
}

void SignalQueue::close() noexcept {
  std::lock_guard lock(mu_);
  closed_ = true;
  events_.clear();
}

}  // namespace efuse::control
