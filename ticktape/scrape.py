"""Read the /metrics of running ticktape processes (for the live summary and status)."""

from __future__ import annotations

import urllib.request
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> Samples:
    """Samples by name (``ticktape_events_out_total`` …) from one process; {} if down."""
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name].append((sample.labels, sample.value))
    return dict(out)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    return sum(v for lbl, v in samples.get(name, ()) if all(lbl.get(k) == x for k, x in labels.items()))


def identity(samples: Samples) -> dict[str, str]:
    """role, pid and home of the process that answered (``ticktape_process_info``); {} if none."""
    found = samples.get("ticktape_process_info") or [({}, 0.0)]
    return dict(found[0][0])


def foreign(samples: Samples, home: str, pid: int | None = None) -> str | None:
    """Why ``samples`` are not from the process a reader means (the one of ``home``,
    with ``pid`` when known), or None when they are."""
    who = identity(samples)
    if not who:
        return "answers without a ticktape_process identity"
    if who.get("home") != str(Path(home).resolve()) or (pid is not None and who.get("pid") != str(pid)):
        return f"held by pid {who.get('pid')} of TICKTAPE_HOME {who.get('home')}"
    return None
