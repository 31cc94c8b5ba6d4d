"""TLS and mutual TLS for `clue serve` / `clue embed` / ``CLUEClient``, as TF Serving does it.

TF Serving takes ``--ssl_config_file``: a text-format ``tensorflow.serving.SSLConfig``
(``server_key``, ``server_cert``, ``custom_ca``, ``client_verify``). The tests make a
throw-away CA, a server certificate for 127.0.0.1 / localhost and client
certificates with the ``cryptography`` package, all on loopback, every call with
a deadline.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import selectors
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf

from processes import kill, stop

from clue_keras.serving.client import CLUEClient, ServingError
from clue_keras.serving.server import load_ssl_config, serve, ssl_config_class, ssl_config_from_files

pytestmark = pytest.mark.skipif(bool(os.environ.get("CLUE_SERVING_ADDRESS")),
                                reason="tests this project's local server itself")

P, S = 2, 3


# ------------------------------------------------------------ certificates --


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject: str, key, issuer_cert=None, issuer_key=None, ca=False, server=False) -> bytes:
    """A PEM certificate for ``subject`` (self-signed when no issuer)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                          key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())
    return cert, cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """PEM files: a CA, a server cert it signs, a client cert it signs, and a
    client cert from another CA. {name: path}."""
    pytest.importorskip("cryptography")
    root = tmp_path_factory.mktemp("pki")
    out = {}

    def write(name, data):
        path = root / name
        path.write_bytes(data)
        out[name] = str(path)

    ca_key = _key()
    ca_cert, ca_pem = _cert("clue test CA", ca_key, ca=True)
    write("ca.pem", ca_pem)
    for role, server in (("server", True), ("client", False)):
        key = _key()
        write(f"{role}.key", _pem_key(key))
        write(f"{role}.pem", _cert(f"clue test {role}", key, ca_cert, ca_key, server=server)[1])
    other_key = _key()
    other_cert, other_pem = _cert("another CA", other_key, ca=True)
    rogue_key = _key()
    write("rogue.key", _pem_key(rogue_key))
    write("rogue.pem", _cert("rogue client", rogue_key, other_cert, other_key)[1])
    write("other_ca.pem", other_pem)
    return out


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# ----------------------------------------------------------------- model --


class _Lengths(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, P, S], tf.string, name="item_texts")])
    def serve(self, item_texts):
        return {"embedding": tf.reshape(tf.cast(tf.strings.length(item_texts), tf.float32), [-1, P * S])}


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls_base")
    module = _Lengths()
    tf.saved_model.save(module, str(base / "1"), signatures={"serving_default": module.serve})
    return str(base)


TEXTS = np.array([[["ab", "", "c"], ["dddd", "e", ""]]], dtype=object)
EXPECTED = np.array([[2, 0, 1, 4, 1, 0]], np.float32)


def _ssl_config_text(pki, client_verify: bool) -> str:
    config = ssl_config_class()(server_key=_read(pki["server.key"]).decode(),
                                server_cert=_read(pki["server.pem"]).decode(),
                                custom_ca=_read(pki["ca.pem"]).decode(), client_verify=client_verify)
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def _client(address, **kwargs):
    kwargs.setdefault("timeout_s", 10)
    kwargs.setdefault("max_attempts", 2)
    kwargs.setdefault("initial_backoff_s", 0.05)
    return CLUEClient(address, "m", **kwargs)


# ----------------------------------------------------------------- tests --


def test_ssl_config_file_parses_tf_serving_text_format(pki, tmp_path):
    path = tmp_path / "ssl.config"
    path.write_text(_ssl_config_text(pki, client_verify=True))
    config = load_ssl_config(str(path))
    assert config.client_verify and config.server_cert.startswith("-----BEGIN CERTIFICATE-----")
    assert config.DESCRIPTOR.full_name == "tensorflow.serving.SSLConfig"
    path.write_text('server_key: "x"\nno_such_field: 1\n')
    with pytest.raises(ValueError, match="SSLConfig"):
        load_ssl_config(str(path))
    # client_verify without custom_ca, and file names instead of PEM contents, are refused.
    with pytest.raises(ValueError, match="custom_ca"):
        serve("/nonexistent-is-not-checked-first", "m", port=0, ssl_config=ssl_config_class()(
            server_key=config.server_key, server_cert=config.server_cert, client_verify=True))
    with pytest.raises(ValueError, match="PEM"):
        serve("/x", "m", port=0, ssl_config=ssl_config_class()(
            server_key=pki["server.key"], server_cert=pki["server.pem"]))
    # PEM markers around garbage, or a key that is not the certificate's: refused at start.
    garbage = "-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n"
    for key in (garbage, _read(pki["client.key"]).decode()):
        with pytest.raises(OSError, match="server_key/server_cert"):
            serve(str(tmp_path), "m", port=0, ssl_config=ssl_config_class()(
                server_key=key, server_cert=config.server_cert))


def test_tls_server_and_plaintext_mismatch_fail_cleanly(pki, model_base):
    handle = serve(model_base, "m", port=0, poll_seconds=0.05,
                   ssl_config=ssl_config_from_files(pki["server.pem"], pki["server.key"]))
    try:
        with _client(handle.address, root_certificates=_read(pki["ca.pem"])) as client:
            np.testing.assert_array_equal(client.predict({"item_texts": TEXTS})["embedding"], EXPECTED)
        # "localhost" is in the certificate too; a name it lacks is refused.
        with _client(f"localhost:{handle.port}", root_certificates=_read(pki["ca.pem"])) as client:
            assert client.served_version() == 1
        with _client(handle.address, root_certificates=_read(pki["ca.pem"]),
                     tls_server_name="not-in-the-cert.example") as client, \
                pytest.raises(ServingError) as info:
            client.served_version()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        # A plaintext client against the TLS server: UNAVAILABLE within the deadline, with a hint.
        with _client(handle.address) as client, pytest.raises(ServingError) as info:
            client.predict({"item_texts": TEXTS})
        assert info.value.code == grpc.StatusCode.UNAVAILABLE, info.value
        assert "--tls-ca" in info.value.details
        # A client trusting another CA: the handshake fails.
        with _client(handle.address, root_certificates=_read(pki["other_ca.pem"])) as client, \
                pytest.raises(ServingError) as info:
            client.predict({"item_texts": TEXTS})
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        handle.stop(grace=0)
    # A TLS client against a plaintext server fails the same way.
    plain = serve(model_base, "m", port=0, poll_seconds=0.05)
    try:
        with _client(plain.address, root_certificates=_read(pki["ca.pem"])) as client, \
                pytest.raises(ServingError) as info:
            client.predict({"item_texts": TEXTS})
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        plain.stop(grace=0)


def test_mutual_tls_refuses_clients_without_a_cert_from_the_ca(pki, model_base):
    handle = serve(model_base, "m", port=0, poll_seconds=0.05,
                   ssl_config=ssl_config_from_files(pki["server.pem"], pki["server.key"], pki["ca.pem"]))
    ca = _read(pki["ca.pem"])
    try:
        with _client(handle.address, root_certificates=ca, client_cert=_read(pki["client.pem"]),
                     client_key=_read(pki["client.key"])) as client:
            np.testing.assert_array_equal(client.predict({"item_texts": TEXTS})["embedding"], EXPECTED)
        for kwargs in ({}, {"client_cert": _read(pki["rogue.pem"]), "client_key": _read(pki["rogue.key"])}):
            with _client(handle.address, root_certificates=ca, **kwargs) as client, \
                    pytest.raises(ServingError) as info:
                client.predict({"item_texts": TEXTS})
            assert info.value.code == grpc.StatusCode.UNAVAILABLE, kwargs.keys()
    finally:
        handle.stop(grace=0)


def test_clue_serve_ssl_config_file_and_clue_embed_tls(pki, model_base, tmp_path, capsys):
    """`clue serve --ssl-config-file` (a real process) with client_verify, and `clue embed --tls-*`."""
    from clue_cli.main import main

    config = tmp_path / "ssl.config"
    config.write_text(_ssl_config_text(pki, client_verify=True))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "clue_cli.main", "serve", "--model-base-path", model_base,
         "--model-name", "m", "--port", "0", "--ssl-config-file", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        selector = selectors.DefaultSelector()
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=180), "clue serve printed nothing"
        address = proc.stdout.readline().rsplit(" on ", 1)[-1].strip()
        assert address.startswith("127.0.0.1:"), address
        users = tmp_path / "users.jsonl"
        users.write_text(json.dumps({"user_id": "u", "items": {"a": ["ab", "c"], "b": ["dddd"]}}) + "\n")
        out = tmp_path / "emb.parquet"
        args = ["embed", "--server", address, "--model", "m", "--input", str(users), "--out", str(out),
                "--services", "a,b", "--max-items", str(S), "--timeout", "10"]
        tls = ["--tls-ca", pki["ca.pem"], "--tls-cert", pki["client.pem"], "--tls-key", pki["client.key"]]
        assert main(args + tls) == 0
        assert "embedded 1 of 1 users" in capsys.readouterr().out
        import pandas as pd

        np.testing.assert_array_equal(pd.read_parquet(out)["embedding"][0], [2, 1, 0, 4, 0, 0])
        # Without a client certificate, or in plaintext: a clean failure (exit 2), no hang.
        assert main(args + ["--tls-ca", pki["ca.pem"]]) == 2
        assert "UNAVAILABLE" in capsys.readouterr().err
        assert main(args) == 2
        assert "UNAVAILABLE" in capsys.readouterr().err
        assert main(args + ["--tls-cert", pki["client.pem"]]) == 2  # half a key pair
        assert stop(proc) == 0
    finally:
        kill(proc)
