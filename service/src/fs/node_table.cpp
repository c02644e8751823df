#include "fs/node_table.h"

namespace efuse::fs {

void add_node_metrics(std::vector<Metric>& out, uint64_t referenced, uint64_t excess_forgets) {
  out.push_back({"efuse_inodes",
                 "Inodes the kernel holds references to (looked up and not yet forgotten): "
                 "nodeids in the backend's node table with a lookup count above zero.",
                 Metric::Type::Gauge, static_cast<double>(referenced)});
  out.push_back({"efuse_forget_excess_total",
                 "FORGETs for more lookups than the backend counted, or for nodeids it no "
                 "longer knows: lookup counts out of step with the kernel (a bug; logged once).",
                 Metric::Type::Counter, static_cast<double>(excess_forgets)});
}

}  // namespace efuse::fs
