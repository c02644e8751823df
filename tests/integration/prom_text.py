"""Parser for the Prometheus text exposition format (Python 3 standard library only).

Shared by the integration tests and bench/, which both read efused's /metrics."""
import re
import socket
import urllib.request

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _unescape(value):
    return re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), value)


def parse(text):
    """[(name, {label: value}, float)] from the text format; ValueError on a bad line."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        mo = _SAMPLE.match(line)
        if not mo:
            raise ValueError(f"unparsable /metrics line: {line!r}")
        labels = {k: _unescape(v) for k, v in _LABEL.findall(mo.group(2) or "")}
        out.append((mo.group(1), labels, float(mo.group(3))))
    return out


def free_port():
    """A loopback TCP port that was free a moment ago (for --metrics 127.0.0.1:PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port, timeout=10):
    """The /metrics text of the efused listening on 127.0.0.1:port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return r.read().decode()


def value(samples, name, **labels):
    """Sum of the samples of `name` whose labels include `labels` (None if no sample)."""
    vals = [v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items())]
    return sum(vals) if vals else None
