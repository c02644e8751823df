// Errno label values for efuse_request_errors_total.
#pragma once

#include <string>

namespace efuse::telemetry {

// The symbolic name of an errors_by_errno slot: "ENOENT", "EACCES", ...; "other" for the
// fuse::kMaxErrno slot that folds every larger (or nonsensical) errno together, and
// "errno_N" for a number glibc has no name for. Bounded by fuse::kMaxErrno + 1 values.
std::string errno_label(int slot);

}  // namespace efuse::telemetry
