#include "bpf/skeleton.h"

#include "efuse_telemetry.skel.h"

namespace efuse::bpf {

TelemetrySkeleton TelemetrySkeleton::open() {
  return TelemetrySkeleton(efuse_telemetry_bpf__open());
}

void TelemetrySkeleton::reset() noexcept {
  if (skel_ != nullptr) efuse_telemetry_bpf__destroy(std::exchange(skel_, nullptr));
}

bpf_object* TelemetrySkeleton::object() const { return skel_ != nullptr ? skel_->obj : nullptr; }

}  // namespace efuse::bpf
