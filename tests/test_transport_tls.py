"""TLS: certificates are verified by default; a private CA works through ca_file."""

import os
import shutil
import ssl
import subprocess
import threading
from wsgiref.simple_server import make_server

import pytest
from conftest import _QuietHandler
from reports import sample_report

import ingest
from monitor_agent.transport import Transport

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture
def https_hub(hub_config, tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = make_server("127.0.0.1", 0, ingest.make_application(hub_config), handler_class=_QuietHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.url = f"https://127.0.0.1:{server.server_port}"
    server.cert = str(cert)
    yield server
    server.shutdown()
    server.server_close()


def test_unknown_certificate_is_refused(https_hub, hub_config):
    result = Transport(https_hub.url, hub_config.get("agent.token"), timeout=5).send(sample_report())
    assert result.outcome == "retry" and "SSL" in result.body


def test_private_ca_file_is_trusted(https_hub, hub_config):
    result = Transport(https_hub.url, hub_config.get("agent.token"), timeout=5, ca_file=https_hub.cert).send(sample_report())
    assert result.outcome == "delivered" and result.status == 201
    assert os.path.exists(hub_config.db_path)
