// Facts about the machine and this process that more than one layer asks for, answered in
// one place: possible CPUs, whether a seccomp filter is active, an errno in words.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace efuse {

// Parses a kernel CPU list ("0-3,8,10-11", as in /sys/devices/system/cpu/possible) into
// ascending CPU ids; nullopt when malformed.
std::optional<std::vector<unsigned>> parse_cpu_list(std::string_view text);

// num_possible_cpus(): from /sys/devices/system/cpu/possible, else get_nprocs_conf(); at
// least 1. (Per-CPU BPF values and FUSE io_uring queues both count these.)
unsigned possible_cpus();

// Whether a seccomp filter is active for this process (systemd-nspawn's default filter, a
// unit's SystemCallFilter=): it may refuse syscalls (bpf, io_uring_setup) whatever our
// capabilities.
bool seccomp_filtered();

// "Read-only file system (EROFS)": the text and the name, so a log line says exactly what
// the kernel answered.
std::string errno_text(int err);

}  // namespace efuse
