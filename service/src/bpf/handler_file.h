// Handler objects as efused accepts them (issue 20): read from a file nobody but root could
// have written, opened without following symlinks, and built for efused's handler ABI
// (EFUSE_HANDLER_ABI_VERSION, bpf/handlers/efuse_handler.h) and for the opcode it is loaded
// for. One place for these checks: config validation (mounts.yaml bpf_handlers), the
// handlers efused loads at mount time and every hot swap go through open_handler().
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

struct bpf_object;

namespace efuse::bpf {

// The bytes of `path`, when the file is owned by `owner` (root in efused) and no group or
// other user can write it, and every directory above it is owned by root or `owner` and
// not writable by group or other (unless sticky, like /tmp: then only the owner of an entry
// can replace it). No component may be a symlink: each is opened with O_NOFOLLOW, so what
// is checked is what is read. False with *why naming the refused component and the reason.
bool read_trusted_file(const std::string& path, uid_t owner, std::vector<char>* bytes,
                       std::string* why);

// A `const volatile __u32` of the object's .rodata (before load): its initial value, or set
// it. False when the object has no such variable.
bool rodata_u32(bpf_object* obj, const char* name, uint32_t* value);
bool set_rodata_u32(bpf_object* obj, const char* name, uint32_t value);

// The section (tracepoint) a handler of `opcode` attaches to: READ has its own, with room
// for file data (kmod patch 0011); every other opcode shares efuse_handler.
const char* handler_section(uint32_t opcode);

// A handler object opened (not loaded) from `path` for `opcode`: trusted as above, built for
// EFUSE_HANDLER_ABI_VERSION (efuse_handler_abi), declaring `opcode` (efuse_handler_opcode;
// `expect_opcode` false for efuse_handler_stats, which answers nothing) and holding what a
// swap needs (efuse_slot, efuse_conn, the efuse_gate map, one program in
// handler_section(opcode)). Null with *why otherwise; the caller closes it (bpf_object__close).
struct OpenedHandler {
  bpf_object* obj = nullptr;
  uint32_t abi = 0;
  std::vector<char> bytes;  // what obj was opened from; kept while obj lives
};
OpenedHandler open_handler(const std::string& path, uint32_t opcode, bool expect_opcode,
                           uid_t owner, std::string* why);

}  // namespace efuse::bpf
