// The configuration `efused --demo` runs: /metrics on 127.0.0.1:19567 and one passthrough
// mount of /tmp/efuse-demo/source at /tmp/efuse-demo/mnt, everything else at its default.
#include "daemon/config.h"

namespace efuse::daemon {

std::string_view embedded_default_config() {
  return R"yaml(# efused --demo
metrics:
  listen: "127.0.0.1:19567"
mounts:
  - name: demo
    mountpoint: /tmp/efuse-demo/mnt
    backend: passthrough
    source: /tmp/efuse-demo/source
)yaml";
}

}  // namespace efuse::daemon
