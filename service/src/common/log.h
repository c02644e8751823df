// Minimal leveled logger to stderr (journald adds timestamps under systemd).
#pragma once

#include <cstdarg>

namespace efuse::log {

enum class Level { Debug = 0, Info = 1, Warn = 2, Error = 3 };

void set_level(Level level);
Level level();
bool parse_level(const char* name, Level* out);
void write(Level level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace efuse::log

#define EFUSE_LOG(lvl, ...)                                              \
  do {                                                                   \
    if (static_cast<int>(lvl) >= static_cast<int>(::efuse::log::level())) \
      ::efuse::log::write(lvl, __VA_ARGS__);                             \
  } while (0)
#define LOG_DEBUG(...) EFUSE_LOG(::efuse::log::Level::Debug, __VA_ARGS__)
#define LOG_INFO(...) EFUSE_LOG(::efuse::log::Level::Info, __VA_ARGS__)
#define LOG_WARN(...) EFUSE_LOG(::efuse::log::Level::Warn, __VA_ARGS__)
#define LOG_ERROR(...) EFUSE_LOG(::efuse::log::Level::Error, __VA_ARGS__)
