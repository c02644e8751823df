// INIT flags exported as efuse_kernel_feature{feature=...} and
// efuse_kernel_feature_offered{feature=...}. One table: the feature label values, the docs
// (docs/metrics.md) and the tests all follow it.
#pragma once

#include <array>
#include <cstdint>

#include "fuse/kernel.h"

namespace efuse::telemetry {

struct KernelFeature {
  const char* name;  // label value
  uint64_t flag;     // fuse::kernel::init bit (flags2 already shifted into the high word)
};

inline constexpr std::array<KernelFeature, 11> kKernelFeatures = {{
    {"passthrough", fuse::kernel::init::kPassthrough},
    {"io_uring", fuse::kernel::init::kOverIoUring},
    {"writeback_cache", fuse::kernel::init::kWritebackCache},
    {"readdirplus", fuse::kernel::init::kDoReaddirplus},
    {"parallel_dirops", fuse::kernel::init::kParallelDirops},
    {"posix_locks", fuse::kernel::init::kPosixLocks},
    {"flock_locks", fuse::kernel::init::kFlockLocks},
    {"max_pages", fuse::kernel::init::kMaxPages},
    {"cache_symlinks", fuse::kernel::init::kCacheSymlinks},
    {"async_dio", fuse::kernel::init::kAsyncDio},
    {"auto_inval_data", fuse::kernel::init::kAutoInvalData},
}};

}  // namespace efuse::telemetry
