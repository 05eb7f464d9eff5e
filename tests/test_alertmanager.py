"""Alerts reach a person: the local stack's Prometheus sends a firing rule to its
Alertmanager, which posts it to the Slack-compatible webhook of ALERT_WEBHOOK_URL (here a
local HTTP receiver)."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from ticktape.stack import ALERTMANAGER_TARGETS, LocalStack, alertmanager_binary

REPO = Path(__file__).resolve().parent.parent
AMTOOL = shutil.which("amtool")
needs_alertmanager = pytest.mark.skipif(
    alertmanager_binary() is None or shutil.which("prometheus") is None,
    reason="prometheus-alertmanager or prometheus not installed (`make system` installs them)",
)

RULE = {
    "groups": [
        {
            "name": "test",
            "rules": [
                {
                    "alert": "TestAlwaysFiring",
                    "expr": "vector(1)",
                    "labels": {"severity": "warning"},
                    "annotations": {"summary": "Always firing", "description": "a rule that fires at once"},
                }
            ],
        }
    ]
}


@pytest.mark.skipif(AMTOOL is None, reason="amtool not installed (`make system`: prometheus-alertmanager)")
def test_alertmanager_config_is_valid(tmp_path):
    shutil.copyfile(REPO / "prometheus" / "alertmanager.yml", tmp_path / "alertmanager.yml")
    (tmp_path / "alert-webhook-url").write_text("https://hooks.example.invalid/services/T/B/X\n")
    done = subprocess.run(
        [AMTOOL, "check-config", "alertmanager.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and " - 1 receivers" in done.stdout


class _Receiver(BaseHTTPRequestHandler):
    got: queue.Queue

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.got.put((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@needs_alertmanager
@pytest.mark.slow
def test_a_firing_rule_reaches_the_webhook_receiver(monkeypatch):
    got: queue.Queue = queue.Queue()
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Receiver", (_Receiver,), {"got": got}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_address[1]}/hooks/ticktape")
    # not under pytest's basetemp, which another engineer's pytest run may remove meanwhile
    home = Path(tempfile.mkdtemp(prefix="ticktape-alerts-"))
    stack = LocalStack(home)
    try:
        endpoints = stack.up(kafka=False, postgres=False, redis=False, prometheus=True)
        assert set(endpoints) == {"PROMETHEUS_URL", "ALERTMANAGER_URL"}
        port = stack.state()["alertmanager"]["port"]
        assert json.loads((home / ALERTMANAGER_TARGETS).read_text()) == [{"targets": [f"127.0.0.1:{port}"]}]
        assert oct((home / "alert-webhook-url").stat().st_mode & 0o777) == "0o600"
        # the stack's own rule file, replaced by a rule that fires at once; SIGHUP reloads it
        (home / "alerts.yml").write_text(yaml.safe_dump(RULE))
        os.kill(stack.state()["prometheus"]["pid"], signal.SIGHUP)
        try:
            path, ctype, body = got.get(timeout=300)  # eval 15 s + group_wait 10 s, on a loaded machine
        except queue.Empty:
            pytest.fail(f"no alert reached the receiver; see {home / 'logs'}")
    finally:
        stack.down()
        server.shutdown()
    shutil.rmtree(home, ignore_errors=True)
    assert path == "/hooks/ticktape" and ctype == "application/json"
    (attachment,) = body["attachments"]
    assert attachment["title"] == "[FIRING] TestAlwaysFiring (warning)"
    assert attachment["text"] == "Always firing: a rule that fires at once\n"
    assert attachment["color"] == "danger"


@needs_alertmanager
def test_without_a_webhook_url_alertmanager_posts_to_an_address_naming_the_setting(monkeypatch):
    monkeypatch.delenv("ALERT_WEBHOOK_URL", raising=False)
    home = Path(tempfile.mkdtemp(prefix="ticktape-alerts-"))
    stack = LocalStack(home)
    try:
        stack.up(kafka=False, postgres=False, redis=False, prometheus=True)
        assert (home / "alert-webhook-url").read_text() == "http://127.0.0.1:9/ALERT_WEBHOOK_URL-is-not-set\n"
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)
