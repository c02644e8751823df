#pragma once

// When the telemetry's send program is attached (docs/bpf.md, "Sampling"). Every FUSE request
// is counted at its end by the end program, which stays attached; the send program, which
// only times requests, is attached for a window of kWindow and detached for a gap, so that
// the windows cover 1 in `every` (telemetry_sample_every) of the time and every request
// sent inside a window is timed. A request sent outside the windows runs one program
// instead of two, and its end finds no start to look up.
//
// The gaps are drawn at random (uniform, mean (every - 1) windows), so that a workload that
// repeats with a period is not aliased with the windows, and a scrape interval sees many
// windows at the default (15 s hold ~19 at 1 in 16). Pure logic: tests drive it with chosen
// draws; the loader (telemetry.cpp) runs it with a real random source and clock.

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace efuse::bpf {

struct SampleWindows {
  // Long enough that attaching and detaching (a link created and closed, the tracepoint's
  // static key flipped) is rare — 2 per period, every 0.8 s on average at 1 in 16 — and
  // short enough that a scrape interval mixes many.
  static constexpr std::chrono::milliseconds kWindow{50};

  // Whether the send program stays attached: 1 in 1 times every request.
  static constexpr bool always(uint32_t every) { return every <= 1; }

  // The gap before the next window, for a draw u in [0, 1): (every - 1) windows on average,
  // between half and one and a half times that.
  static std::chrono::microseconds gap(uint32_t every, double u) {
    if (always(every)) return std::chrono::microseconds{0};
    u = std::clamp(u, 0.0, 1.0);
    const double mean_us =
        static_cast<double>(every - 1) *
        static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(kWindow).count());
    return std::chrono::microseconds{static_cast<int64_t>(mean_us * (0.5 + u))};
  }
};

}  // namespace efuse::bpf
