"""TimescaleDB background-job health as metrics, from the PostgreSQL sink process.

Every ``JOB_POLL_S`` seconds a thread reads ``timescaledb_information.jobs`` and
``job_stats`` and sets, per job, ``ticktape_timescaledb_job_failed`` (1 when its last run
failed) and ``ticktape_timescaledb_job_failures`` (failed runs since it was created);
the series of a removed job are dropped.  On plain PostgreSQL there are no jobs and no
series.  A database that does not answer leaves the last values (the sink's own metrics
report the outage) and is asked again at the next poll.
"""

from __future__ import annotations

import logging
import threading

import psycopg

from ticktape import metrics

log = logging.getLogger(__name__)

JOB_POLL_S = 30.0  # compression/retention jobs run hourly to daily: 30 s is prompt enough

_JOBS = """
SELECT j.job_id::text, j.proc_name, coalesce(j.hypertable_name, ''),
       coalesce(s.last_run_status = 'Failed', false), coalesce(s.total_failures, 0)
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
ORDER BY j.job_id"""


def job_health(conn: psycopg.Connection) -> list[tuple[str, str, str, bool, int]]:
    """(job id, proc, hypertable, last run failed, total failures) per job; [] without TimescaleDB."""
    if not conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone():
        return []
    return conn.execute(_JOBS).fetchall()


class JobHealthExporter:
    """The polling thread: ``start()``, then ``stop()`` (returns once it has ended)."""

    def __init__(self, url: str, every_s: float = JOB_POLL_S):
        self.url = url
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tsdb-job-health", daemon=True)
        self._exported: set[tuple[str, str, str]] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def poll(self) -> None:
        """Read the jobs once and update the metrics (psycopg.Error when the database fails)."""
        with psycopg.connect(
            self.url, autocommit=True, connect_timeout=5, application_name="ticktape-sink-postgres-jobs"
        ) as conn:
            rows = job_health(conn)
        seen = set()
        for job, proc, table, failed, failures in rows:
            labels = (job, proc, table)
            seen.add(labels)
            metrics.TSDB_JOB_FAILED.labels(*labels).set(1 if failed else 0)
            metrics.TSDB_JOB_FAILURES.labels(*labels).set(failures)
        for labels in self._exported - seen:
            metrics.TSDB_JOB_FAILED.remove(*labels)
            metrics.TSDB_JOB_FAILURES.remove(*labels)
        self._exported = seen

    def _loop(self) -> None:
        while True:
            try:
                self.poll()
            except psycopg.Error as e:
                log.debug("job health: %s", str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
            if self._stop.wait(self.every_s):
                return
