// Move-only RAII owner of the generated libbpf skeleton (efuse_telemetry.skel.h, made by
// `bpftool gen skeleton` at build time). Destroying it detaches every link and closes
// every program and map: nothing outlives efused (nothing is pinned in bpffs).
#pragma once

#include <utility>

struct efuse_telemetry_bpf;
struct bpf_object;

namespace efuse::bpf {

class TelemetrySkeleton {
 public:
  TelemetrySkeleton() = default;
  // Opens the embedded object (parses the ELF, no kernel interaction, no privileges).
  // Empty (!*this) on failure with errno set.
  static TelemetrySkeleton open();

  TelemetrySkeleton(TelemetrySkeleton&& other) noexcept
      : skel_(std::exchange(other.skel_, nullptr)) {}
  TelemetrySkeleton& operator=(TelemetrySkeleton&& other) noexcept {
    if (this != &other) {
      reset();
      skel_ = std::exchange(other.skel_, nullptr);
    }
    return *this;
  }
  TelemetrySkeleton(const TelemetrySkeleton&) = delete;
  TelemetrySkeleton& operator=(const TelemetrySkeleton&) = delete;
  ~TelemetrySkeleton() { reset(); }

  // Detaches, unloads and frees (efuse_telemetry_bpf__destroy).
  void reset() noexcept;

  explicit operator bool() const { return skel_ != nullptr; }
  efuse_telemetry_bpf* get() const { return skel_; }
  efuse_telemetry_bpf* operator->() const { return skel_; }
  bpf_object* object() const;

 private:
  explicit TelemetrySkeleton(efuse_telemetry_bpf* skel) : skel_(skel) {}
  efuse_telemetry_bpf* skel_ = nullptr;
};

}  // namespace efuse::bpf
