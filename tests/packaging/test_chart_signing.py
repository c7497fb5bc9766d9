"""Message signing in the chart (issue 21): on by default with a key pair the chart generates and
keeps, mounted into the worker only; Flower read-only and keyless; a bot's certificate trusted from
values. Rendered by real Helm 3 and 4; the generated pair is used by Celery's own signing code and the
rendered Flower is started for real against a real Redis.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading

from packaging_support import (CHART, FULLNAME, KeptSecrets, cluster, free_port, helm,  # noqa: F401 (fixtures)
                               installed, kept_secret, one, render, worker_container)
SIGNING = f"{FULLNAME}-signing"
FLOWER_ON = {"flower": {"enabled": True, "basicAuth": {"credentials": "ops:pw"}}}


def projected_files(pod: dict, container: dict, directory: str) -> list[tuple[str, str, str]]:
    """(kind, object name, key) of every file a projected or plain volume mounted at `directory` holds."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    sources = volume["projected"]["sources"] if "projected" in volume else [volume]
    out = []
    for source in sources:
        kind = "secret" if "secret" in source else "configMap"
        ref = source[kind]
        name = ref.get("secretName") or ref["name"]
        out += [(kind, name, i["key"]) for i in ref.get("items", [])] or [(kind, name, "*")]
    return out


def test_signing_is_on_by_default_with_a_generated_key_pair_kept_on_uninstall(helm):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    objects = render(helm, {})
    secret = one(objects, "Secret", SIGNING)
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    key = serialization.load_pem_private_key(secret["stringData"]["tls.key"].encode(), password=None)
    cert = x509.load_pem_x509_certificate(secret["stringData"]["tls.crt"].encode())
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # a pair
    pod, worker = worker_container(objects)
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert {"CELERY_SECURITY_KEY_FILE", "CELERY_SECURITY_CERT_FILE", "CELERY_SECURITY_CERT_STORE"} <= set(env)
    store = projected_files(pod, worker, env["CELERY_SECURITY_CERT_STORE"])
    assert ("secret", SIGNING, "tls.crt") in store and not [f for f in store if f[2] == "tls.key"]


def test_flower_never_has_the_key_and_cannot_send_tasks(helm):
    objects = render(helm, FLOWER_ON)
    flower = one(objects, "Deployment", f"{FULLNAME}-flower")["spec"]["template"]["spec"]
    (container,) = flower["containers"]
    assert not [e for e in container["env"] if e["name"].startswith("CELERY_SECURITY_")]
    assert SIGNING not in str(flower["volumes"])
    assert "--read_only=True" in container["args"]


def test_a_bots_certificate_joins_the_worker_trust_store(helm):
    bot = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    objects = render(helm, {"signing": {"trustedCertificates": {"chatops-bot.crt": bot}}})
    trust = one(objects, "ConfigMap", f"{FULLNAME}-signing-trust")
    assert trust["data"] == {"chatops-bot.crt": bot}
    pod, worker = worker_container(objects)
    env = {e["name"]: e.get("value") for e in worker["env"]}
    store = projected_files(pod, worker, env["CELERY_SECURITY_CERT_STORE"])
    assert ("configMap", f"{FULLNAME}-signing-trust", "*") in store and ("secret", SIGNING, "tls.crt") in store


def test_signing_key_pair_is_kept_across_upgrades(helm, cluster):
    KeptSecrets.kept = {SIGNING: kept_secret(SIGNING, {"tls.crt": "CERT", "tls.key": "KEY"})}
    data = one(installed(helm, cluster, {}), "Secret", SIGNING)["stringData"]
    assert data == {"tls.crt": "CERT", "tls.key": "KEY"}


def test_signing_can_be_turned_off(helm):
    objects = render(helm, {"signing": {"generate": False}})
    assert not [o for o in objects if o["metadata"]["name"] == SIGNING]
    _, worker = worker_container(objects)
    assert not [e for e in worker["env"] if e["name"].startswith("CELERY_SECURITY_")]


def test_generated_key_pair_signs_and_verifies_with_celery_security(helms, tmp_path):
    """The pair genSelfSignedCert makes is one Celery's `auth` serializer takes: a message signed with the
    rendered key verifies against the rendered trust store (the worker's certificate as worker.crt)."""
    from celery.security.certificate import Certificate, FSCertStore
    from celery.security.key import PrivateKey
    from celery.security.serialization import SecureSerializer

    data = one(render(helms["4"], {}), "Secret", SIGNING)["stringData"]
    (tmp_path / "trust").mkdir()
    (tmp_path / "trust" / "worker.crt").write_text(data["tls.crt"])
    serializer = SecureSerializer(PrivateKey(data["tls.key"]), Certificate(data["tls.crt"]),
                                  FSCertStore(str(tmp_path / "trust")), digest="sha256", serializer="json")
    assert serializer.deserialize(serializer.serialize({"kwargs": {"backup": "latest"}})) == {
        "kwargs": {"backup": "latest"}}


def test_rendered_flower_refuses_to_queue_a_restore(helms, redis_server, tmp_path):
    """Flower started with the chart's arguments against a real Redis: a logged-in user's
    POST /api/task/async-apply/taiga_backup.restore is refused (403), nothing reaches the queue."""
    import redis
    import urllib.error
    import urllib.request

    (container,) = one(render(helms["4"], FLOWER_ON), "Deployment",
                       f"{FULLNAME}-flower")["spec"]["template"]["spec"]["containers"]
    port = free_port()
    args = [a if not a.startswith("--port=") else f"--port={port}" for a in container["args"]]
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CELERY_BROKER_URL": redis_server.url,
           "FLOWER_BASIC_AUTH": "ops:pw", "FLOWER_ADDRESS": "127.0.0.1", "TAIGA_INSTANCE": "taiga"}
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"  # the venv's celery
    flower = subprocess.Popen(args, env=env, cwd=str(CHART.parents[1]), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        auth = "Basic " + base64.b64encode(b"ops:pw").decode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/task/async-apply/taiga_backup.restore",
                                         data=b'{"kwargs": {"backup": "latest"}}', method="POST",
                                         headers={"Authorization": auth, "Content-Type": "application/json"})
        status = None
        for _ in range(200):
            try:
                status = urllib.request.urlopen(request, timeout=5).status
                break
            except urllib.error.HTTPError as exc:
                status = exc.code
                break
            except OSError:
                threading.Event().wait(0.1)
        assert status == 403
        client = redis.Redis.from_url(redis_server.url)
        assert client.llen("taiga-backup.taiga") == client.llen("celery") == 0
    finally:
        flower.terminate()
        flower.wait(timeout=20)
