"""Repositories reached over the network (pgBackRest on S3, barman-cloud on S3) are fetched inside
the restore sandbox, which reaches exactly one endpoint: the repository's (netrepo.py). Real
moto_server, real pgBackRest, real barman-cloud, real bubblewrap."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import psycopg
import pytest

from app.temporal import free_port
from drdrill.providers.postgres import sandbox
from drdrill.providers.postgres.netrepo import Endpoint, Tunnel, endpoint_of_url
from tests.moto_server import _wait_up, moto_endpoint  # noqa: F401
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
