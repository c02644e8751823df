#include "common/log.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <unistd.h>

namespace efuse::log {
namespace {
std::atomic<int> g_level{static_cast<int>(Level::Info)};
const char* const kNames[] = {"debug", "info", "warning", "error"};
// sd-daemon(3) priority prefixes, understood by journald when stderr is the journal.
const char* const kPrefixes[] = {"<7>", "<6>", "<4>", "<3>"};
}  // namespace

void set_level(Level l) { g_level.store(static_cast<int>(l)); }
Level level() { return static_cast<Level>(g_level.load(std::memory_order_relaxed)); }

bool parse_level(const char* name, Level* out) {
  for (int i = 0; i < 4; ++i) {
    if (std::strcmp(name, kNames[i]) == 0) {
      *out = static_cast<Level>(i);
      return true;
    }
  }
  return false;
}

void write(Level l, const char* fmt, ...) {
  char line[1024];
  int idx = static_cast<int>(l);
  static const bool journal = getenv("JOURNAL_STREAM") != nullptr;
  int n = std::snprintf(line, sizeof line, "%sefused: %s: ", journal ? kPrefixes[idx] : "",
                        kNames[idx]);
  va_list ap;
  va_start(ap, fmt);
  n += std::vsnprintf(line + n, sizeof line - static_cast<size_t>(n) - 1, fmt, ap);
  va_end(ap);
  if (n > static_cast<int>(sizeof line) - 2) n = sizeof line - 2;
  line[n++] = '\n';
  // One write(2) per line so lines from worker threads never interleave.
  ssize_t ignored = ::write(STDERR_FILENO, line, static_cast<size_t>(n));
  (void)ignored;
}

}  // namespace efuse::log
