"""Repositories reached over the network (pgBackRest on S3, barman-cloud on S3) are fetched inside
the restore sandbox, which reaches exactly one endpoint: the repository's (netrepo.py). Real
moto_server, real pgBackRest, real barman-cloud, real bubblewrap."""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import subprocess
import threading
import uuid
from pathlib import Path

import boto3
import pytest

from drdrill.localpg import sandbox
from drdrill.providers.postgres.netrepo import Endpoint, Tunnel, endpoint_of_url
from tests.moto_server import moto_endpoint  # noqa: F401
from tests.pg_fixtures import clusters_left, cluster_root  # noqa: F401
from tests.test_pitr import PGBACKREST, Production, as_server_user, at, barman, owned_by_server, pitr_drill, run

pytestmark = pytest.mark.skipif(not sandbox.available(), reason="bubblewrap is not installed")

SECRET = "worker-secret-7f3a"

# What the fetching tool sees, run as that tool in the same sandbox: JSON of what it could reach.
PROBE = """
import json, os, socket, sys, urllib.request
def reach(port):
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()
with urllib.request.urlopen(sys.argv[1] + "/moto-api/data.json", timeout=10) as r:
    status = r.status
print(json.dumps({"endpoint": status, "production": reach(5432), "other": reach(int(sys.argv[2])),
                  "secret": any("%s" in v for v in os.environ.values()), "uid": os.getuid()}))
""" % SECRET


def test_the_fetching_sandbox_reaches_the_repository_endpoint_only(cluster_root, moto_endpoint, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DRDRILL_TEST_WORKER_SECRET", SECRET)
    other = socket.socket()  # a service on another loopback port of the worker
    other.bind(("127.0.0.1", 0))
    other.listen(1)
    endpoint = endpoint_of_url(moto_endpoint)
    identity = sandbox.identity_for(cluster_root)
    with other, Tunnel(endpoint, cluster_root, identity) as tunnel, sandbox.Inputs() as inputs:
        box = sandbox.Sandbox(identity, ro=tunnel.ro, files=tunnel.files, env={"AWS_ACCESS_KEY_ID": "named"})
        argv = tunnel.wrap(["/usr/bin/python3", "-I", "-S", "-c", PROBE, moto_endpoint, str(other.getsockname()[1])], inputs)
        proc = box.run(argv, pass_fds=inputs.fds, timeout=60)
        socket_dir = tunnel.dir
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["endpoint"] == 200  # the repository's endpoint, through the relay
    assert seen["production"] is False  # 127.0.0.1:5432: production's port on the worker
    assert seen["other"] is False
    assert seen["secret"] is False
    assert seen["uid"] == (identity.uid if os.geteuid() == 0 else os.getuid())
    assert not socket_dir.exists()  # the relay's directory goes with the run


def test_an_endpoint_on_a_privileged_port_is_reached_on_a_high_port_inside_by_its_own_name():
    aws = endpoint_of_url("https://s3.eu-west-1.amazonaws.com")
    assert aws == Endpoint("s3.eu-west-1.amazonaws.com", 443)
    assert (aws.inner_host, aws.inner_port) == ("s3.eu-west-1.amazonaws.com", 40443)
    assert endpoint_of_url("not a url") is None


# ------------------------------------------------------------------------------------ pgBackRest on S3


def _tls_front(listener: ssl.SSLContext, sock: socket.socket, upstream: tuple[str, int]) -> None:
    """Terminate TLS for moto_server (plain HTTP): pgBackRest speaks to S3 over TLS only, and
    werkzeug's own TLS ends connections without a close_notify, which OpenSSL 3 refuses. One thread
    per connection, which alone touches its TLS object (a select loop, then close_notify)."""
    def handle(conn):
        try:
            tls = listener.wrap_socket(conn, server_side=True)
            up = socket.create_connection(upstream)
        except OSError:
            conn.close()
            return
        try:
            while True:
                ready = [tls] if tls.pending() else select.select([tls, up], [], [], 60)[0]
                if not ready:
                    break
                if tls in ready:
                    data = tls.recv(65536)
                    if not data:
                        break
                    up.sendall(data)
                if up in ready:
                    data = up.recv(65536)
                    if not data:
                        tls.settimeout(2)  # send close_notify; the client's own need not come
                        tls.unwrap()
                        break
                    tls.sendall(data)
        except (OSError, ValueError):
            pass
        finally:
            up.close()
            tls.close()

    while True:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


@pytest.fixture
def moto_tls(moto_endpoint, tmp_path):  # noqa: F811
    """The session's moto_server behind a TLS front on a port of its own: (https URL, port)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    front = socket.socket()
    front.bind(("127.0.0.1", 0))
    front.listen(64)
    upstream = endpoint_of_url(moto_endpoint)
    threading.Thread(target=_tls_front, args=(context, front, (upstream.host, upstream.port)), daemon=True).start()
    port = front.getsockname()[1]
    with front:
        yield f"https://127.0.0.1:{port}", port
    front.close()


@pytest.mark.skipif(PGBACKREST is None, reason="pgbackrest is not installed")
def test_a_pgbackrest_s3_repository_restores_and_recovers_inside_the_sandbox(drill_harness, cluster_root, moto_tls, monkeypatch):  # noqa: F811
    url, port = moto_tls
    bucket = f"pgbr-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("PGBACKREST_REPO1_S3_KEY", "testing")
    monkeypatch.setenv("PGBACKREST_REPO1_S3_KEY_SECRET", "testing-secret")
    boto3.client("s3", endpoint_url=url, verify=False, region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing-secret").create_bucket(Bucket=bucket)
    home = owned_by_server(cluster_root / "pgbr")
    for d in ("lock", "log"):
        owned_by_server(home / d)
    repo = (f"repo1-type=s3\nrepo1-path=/repo\nrepo1-s3-bucket={bucket}\nrepo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={port}\n"
            "repo1-s3-region=us-east-1\nrepo1-s3-uri-style=path\nrepo1-storage-verify-tls=n\nrepo1-retention-full=9\n")
    prod_conf, drill_conf = home / "prod.conf", home / "drill.conf"
    prod = Production(cluster_root, f"{PGBACKREST} --config={prod_conf} --stanza=main archive-push %p")
    try:
        stanza = (f"[main]\npg1-path={prod.cluster.data}\npg1-socket-path={prod.cluster.sock}\npg1-port=5432\npg1-user=drdrill\n")
        # Production's configuration holds the keys; the drill's names them from the environment.
        prod_conf.write_text(f"[global]\n{repo}repo1-s3-key=testing\nrepo1-s3-key-secret=testing-secret\nlock-path={home / 'lock'}\n"
                             f"log-path={home / 'log'}\nlog-level-file=off\nstart-fast=y\n{stanza}")
        drill_conf.write_text(f"[global]\n{repo}log-level-file=off\n{stanza}")
        os.chmod(drill_conf, 0o644)
        os.chmod(prod_conf, 0o600)
        if as_server_user():
            os.chown(prod_conf, as_server_user()["user"], as_server_user()["group"])
        for args in (["stanza-create"], ["backup", "--type=full"]):
            out = subprocess.run([PGBACKREST, f"--config={prod_conf}", "--stanza=main", *args], capture_output=True, text=True, **as_server_user())
            assert out.returncode == 0, out.stderr + out.stdout
        rows = prod.markers(3)
        prod.archive()
    finally:
        prod.stop()
    target = rows[1][1] + (rows[2][1] - rows[1][1]) / 2
    source = f"pgbackrest: {{stanza: main, config: {drill_conf}, user: drdrill, env: [PGBACKREST_REPO1_S3_KEY, PGBACKREST_REPO1_S3_KEY_SECRET]}}"
    validations = f'  - {{name: two-markers, type: sql, target: app, query: "SELECT max(id) FROM markers", expect: "== {rows[1][0]}"}}\n'
    result = run(drill_harness, pitr_drill(source, at(target), validations))

    assert result.verdict == "PASSED", (result.findings, result.validations)
    how = result.restored[0].details["restored_with"]
    assert "in the sandbox: bubblewrap as uid" in how and f"only the repository's endpoint 127.0.0.1:{port}" in how
    assert clusters_left(cluster_root) == []
