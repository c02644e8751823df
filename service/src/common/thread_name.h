// Thread names as `top -H`, `ps -L`, perf and /proc/PID/task/*/comm show them.
#pragma once

#include <pthread.h>

#include <cstdio>

namespace efuse {

// Names the calling thread; the kernel keeps 15 characters.
template <typename... Args>
inline void name_this_thread(const char* fmt, Args... args) {
  char name[16];
  if constexpr (sizeof...(Args) == 0)
    std::snprintf(name, sizeof name, "%s", fmt);
  else
    std::snprintf(name, sizeof name, fmt, args...);
  pthread_setname_np(pthread_self(), name);
}

}  // namespace efuse
