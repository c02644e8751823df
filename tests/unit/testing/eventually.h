// Waiting for something another thread does (a watcher, an evictor) without a fixed sleep.
#pragma once

#include <chrono>
#include <thread>

namespace efuse::testing {

// Polls `done` every 2 ms for up to `limit`; its last answer.
template <typename F>
bool eventually(F done, std::chrono::seconds limit = std::chrono::seconds(5)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  return done();
}

}  // namespace efuse::testing
