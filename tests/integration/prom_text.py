"""Parser for the Prometheus text exposition format (Python 3 standard library only).

Shared by the integration tests and bench/, which both read efused's /metrics."""
import re

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
