// Facts about other processes, for messages that name them.
#pragma once

#include <sys/types.h>

#include <string>

namespace efuse {

// Process `pid`'s command line with its arguments separated by spaces ("" when gone).
std::string command_line(pid_t pid);

// "pid 123 (efused --config /etc/efuse/mounts.yaml)": a process as an operator needs it.
std::string describe_process(pid_t pid);

}  // namespace efuse
