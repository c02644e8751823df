#include "common/process.h"

#include <fstream>
#include <sstream>

namespace efuse {

std::string command_line(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline");
  std::ostringstream ss;
  ss << f.rdbuf();
  std::string cmd = ss.str();
  while (!cmd.empty() && cmd.back() == '\0') cmd.pop_back();
  for (char& c : cmd)
    if (c == '\0') c = ' ';
  return cmd;
}

std::string describe_process(pid_t pid) {
  std::string cmd = command_line(pid);
  return "pid " + std::to_string(pid) + (cmd.empty() ? "" : " (" + cmd + ")");
}

}  // namespace efuse
