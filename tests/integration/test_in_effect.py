#!/usr/bin/env python3
"""efused says what is in effect: the I/O path a mount really uses (io_path_effective in
efuse_mount_info, logged once when passthrough was asked for and is not there, forced here
with EFUSE_MASK_KERNEL_FEATURES), a bad mask name fails clearly, and --check-config warns
about an IPv6 metrics address that Debian 12's civetweb cannot serve."""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efuse_harness as h  # noqa: E402
from prom_text import free_port, parse, scrape  # noqa: E402

J = os.path.join


def mount_info(port, mount):
    rows = [labels for name, labels, _ in parse(scrape(port))
            if name == "efuse_mount_info" and labels.get("mount") == mount]
    assert len(rows) == 1, rows
    return rows[0]


def offered(port, mount, feature):
    for name, labels, v in parse(scrape(port)):
        if name == "efuse_kernel_feature_offered" and labels == {"mount": mount,
                                                                  "feature": feature}:
            return v
    raise AssertionError(f"no efuse_kernel_feature_offered for {feature}")


class Masked(h.EfusedMount):
    """efused --mount ... with EFUSE_MASK_KERNEL_FEATURES in its environment."""

    def __init__(self, mask, port, **kw):
        self.mask = mask
        super().__init__(args=["--io-path", "passthrough", "--metrics", f"127.0.0.1:{port}"],
                         start=False, **kw)
        old = os.environ.get("EFUSE_MASK_KERNEL_FEATURES")
        try:
            os.environ["EFUSE_MASK_KERNEL_FEATURES"] = mask
            self.start()
        finally:
            if old is None:
                del os.environ["EFUSE_MASK_KERNEL_FEATURES"]
            else:
                os.environ["EFUSE_MASK_KERNEL_FEATURES"] = old


def test_passthrough_masked_is_cache_in_effect():
    port = free_port()
    with Masked("passthrough", port, tag="efuse-effect") as m:
        name = os.path.basename(m.mnt)
        info = mount_info(port, name)
        assert (info["io_path"], info["io_path_effective"]) == ("passthrough", "cache"), info
        assert offered(port, name, "passthrough") == 0
        log = m.log_text()
        warned = re.findall(r"io_path passthrough requested, but FUSE passthrough is not "
                            r"available: masked by EFUSE_MASK_KERNEL_FEATURES", log)
        assert len(warned) == 1, log  # once
        assert "EFUSE_MASK_KERNEL_FEATURES=passthrough" in log
        # The data really goes through efused: a read is served as READ requests.
        h.write_file(J(m.src, "f"), b"x" * 65536)
        before = sum(v for n, l, v in parse(scrape(port))
                     if n == "efuse_requests_total" and l.get("opcode") == "read")
        with open(J(m.mnt, "f"), "rb") as f:
            assert f.read() == b"x" * 65536
        after = sum(v for n, l, v in parse(scrape(port))
                    if n == "efuse_requests_total" and l.get("opcode") == "read")
        assert after > before, (before, after)


def test_passthrough_unmasked_is_in_effect():
    """The same mount without the mask (this host's kernel has passthrough)."""
    port = free_port()
    with Masked("", port, tag="efuse-effect") as m:
        name = os.path.basename(m.mnt)
        info = mount_info(port, name)
        if offered(port, name, "passthrough") != 1:  # a kernel without it: cache, and said
            assert info["io_path_effective"] == "cache", info
            assert "passthrough is not available" in m.log_text()
            return
        assert (info["io_path"], info["io_path_effective"]) == ("passthrough", "passthrough")
        assert "passthrough is not available" not in m.log_text()


def test_unknown_mask_name_fails_the_mount_clearly():
    with h.EfusedMount(start=False, tag="efuse-effect") as m:
        env = dict(os.environ, EFUSE_MASK_KERNEL_FEATURES="passthru")
        r = h.run(m.cmd(), check=False, timeout=60, env=env)
        assert r.rc == 1, (r.rc, r.err)
        assert ("EFUSE_MASK_KERNEL_FEATURES: unknown feature 'passthru'; known: passthrough, "
                "io_uring") in r.err, r.err
        assert not h.is_fuse_mounted(m.mnt)


def test_check_config_warns_about_ipv6_listen():
    with h.EfusedMount(start=False, tag="efuse-effect") as m:
        cfg = J(m.tmp, "v6.yaml")
        r = h.check_config(cfg, f'metrics:\n  listen: "[::1]:0"\nmounts:\n  - name: a\n'
                                f'    mountpoint: {m.mnt}\n    backend: passthrough\n'
                                f'    source: {m.src}\n')
        assert r.rc == 0, (r.rc, r.err)
        assert f'{cfg}: warning: metrics.listen "[::1]:0" is an IPv6 address' in r.err, r.err
        # An IPv4 address: no warning.
        r = h.check_config(cfg, 'metrics:\n  listen: "127.0.0.1:0"\nmounts: []\n')
        assert r.rc == 0 and "warning" not in r.err, (r.rc, r.err)


if __name__ == "__main__":
    h.main(globals())
