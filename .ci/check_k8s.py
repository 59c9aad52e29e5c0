#!/usr/bin/env python3
"""Checks deploy/k8s offline.

1. Every resource of kustomization.yaml, and the Secrets its generators
   make (with stand-in data), validates against the Kubernetes schemas that
   kubernetes-validate bundles (strict: unknown fields are errors), for the
   oldest and the newest Kubernetes version we aim at.
2. The pieces fit together: names referenced exist, the Service selects the
   pod and targets its ports, the probes call the port that serves plaintext
   health, terminationGracePeriodSeconds >= LSTMD_SHUTDOWN_GRACE + 10, the
   security settings are there, the paths of the ConfigMap are mounted, and
   (with --lstmd BIN) every LSTMD_* key is a variable `lstmd serve` reads.

3. The overlay deploy/cluster-stores (the base on PostgreSQL and S3),
   rendered by `kubectl kustomize` with stand-in secret files, validates the
   same way and fits: no PVC, the data dir on an emptyDir, the database URL
   and S3 credentials from its Secret, LSTMD_BLOBS an s3:// URL, a headless
   Service on the pods, connections that age, still one replica (one per
   database).

Usage: check_k8s.py [--lstmd target/release/lstmd]. Exit 0 when all is well.
"""
import argparse
import base64
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
VERSIONS = ["1.29.0", "1.37.0"]

failures = []


def check(ok, message):
    if not ok:
        failures.append(message)


def port_of(address):
    return int(address.rsplit(":", 1)[1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lstmd", help="the lstmd binary, to check the LSTMD_* names")
    args = parser.parse_args()

    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = {}
    files = []
    for name in kustomization["resources"]:
        path = K8S / name
        files.append(path)
        for doc in yaml.safe_load_all(path.read_text()):
            resources[(doc["kind"], doc["metadata"]["name"])] = doc

    with tempfile.TemporaryDirectory() as tmp:
        for gen in kustomization.get("secretGenerator", []):
            data = {}
            for entry in gen.get("files", []):
                key, _, source = entry.partition("=")
                check(source.startswith("secrets/"), f"{gen['name']}: {source} is outside secrets/")
                data[key] = base64.b64encode(b"stand-in").decode()
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": gen["name"]},
                "type": gen.get("type", "Opaque"),
                "data": data,
            }
            resources[("Secret", gen["name"])] = secret
            path = pathlib.Path(tmp) / f"secret-{gen['name']}.yaml"
            path.write_text(yaml.safe_dump(secret))
            files.append(path)

        validate(files)

    deployment = resources[("Deployment", "lstmd")]
    service = resources[("Service", "lstmd")]
    config = resources[("ConfigMap", "lstmd-config")]["data"]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]

    check(spec["replicas"] == 1, "one replica owns the data volume")
    check(spec["strategy"]["type"] == "Recreate", "strategy must be Recreate")

    # References.
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            check(("ConfigMap", name) in resources, f"no ConfigMap {name}")
    volumes = {v["name"]: v for v in pod["volumes"]}
    for v in volumes.values():
        if "secret" in v:
            name = v["secret"]["secretName"]
            check(("Secret", name) in resources, f"no Secret {name}")
        if "persistentVolumeClaim" in v:
            name = v["persistentVolumeClaim"]["claimName"]
            check(("PersistentVolumeClaim", name) in resources, f"no PVC {name}")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for m in container["volumeMounts"]:
        check(m["name"] in volumes, f"mount of unknown volume {m['name']}")
        check("subPath" not in m, f"{m['name']}: subPath mounts miss secret updates")

    # Service -> pod.
    labels = spec["template"]["metadata"]["labels"]
    for k, v in service["spec"]["selector"].items():
        check(labels.get(k) == v, f"the Service selects {k}={v}, the pod lacks it")
    for k, v in spec["selector"]["matchLabels"].items():
        check(labels.get(k) == v, f"the Deployment selects {k}={v}, the pod lacks it")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for p in service["spec"]["ports"]:
        check(p["targetPort"] in ports, f"Service port {p['name']} targets no container port")

    # Settings <-> ports, probes, paths.
    check(port_of(config["LSTMD_LISTEN"]) == ports["grpc"], "LSTMD_LISTEN port != grpc port")
    check(port_of(config["LSTMD_METRICS_LISTEN"]) == ports["metrics"], "metrics port mismatch")
    tls = "LSTMD_TLS_CERT" in config
    health_port = port_of(config["LSTMD_HEALTH_LISTEN"]) if tls else ports["grpc"]
    if tls:
        check("LSTMD_HEALTH_LISTEN" in config, "with TLS the probes need LSTMD_HEALTH_LISTEN")
        check(ports.get("health") == health_port, "health port mismatch")
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
        grpc = container.get(probe, {}).get("grpc")
        check(grpc is not None, f"{probe} must be a gRPC probe")
        if grpc:
            check(grpc["port"] == health_port, f"{probe} must call port {health_port}")
            check(grpc.get("service", "") == "", f"{probe} must check the whole server")
    check(mounts.get(config["LSTMD_DATA_DIR"]) == "data", "LSTMD_DATA_DIR is not the PVC mount")
    for key in ["LSTMD_TLS_CERT", "LSTMD_TLS_KEY", "LSTMD_TLS_CLIENT_CA", "LSTMD_AUTH_TOKEN_FILE"]:
        if key in config:
            folder = str(pathlib.PurePosixPath(config[key]).parent)
            volume = volumes.get(mounts.get(folder, ""), {})
            check("secret" in volume, f"{key} is not in a mounted Secret")
    grace = int(config["LSTMD_SHUTDOWN_GRACE"])
    check(
        pod["terminationGracePeriodSeconds"] >= grace + 10,
        f"terminationGracePeriodSeconds must be >= LSTMD_SHUTDOWN_GRACE + 10 = {grace + 10}",
    )

    # Security.
    check(pod["securityContext"].get("runAsNonRoot") is True, "pod runAsNonRoot")
    check(pod["securityContext"].get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp")
    sc = container["securityContext"]
    check(sc.get("runAsNonRoot") is True, "container runAsNonRoot")
    check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "drop ALL capabilities")
    check("limits" in container.get("resources", {}), "resource limits")
    check("requests" in container.get("resources", {}), "resource requests")

    # Every LSTMD_* key is a variable lstmd reads.
    if args.lstmd:
        help_text = subprocess.run(
            [args.lstmd, "serve", "--help"], capture_output=True, text=True, check=True
        ).stdout
        known = set(re.findall(r"env: (LSTMD_[A-Z0-9_]+)=", help_text))
        check(len(known) > 10, "could not read the variables from `lstmd serve --help`")
        for key in config:
            if key.startswith("LSTMD_"):
                check(key in known, f"{key} is not a variable of `lstmd serve`")

    check_cluster_stores(known if args.lstmd else None)

    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    if failures:
        return 1
    print(f"deploy/k8s: {len(resources)} resources valid for Kubernetes {', '.join(VERSIONS)}; consistent")
    return 0


def validate(files):
    validate = pathlib.Path(sys.executable).parent / "kubernetes-validate"
    for version in VERSIONS:
        result = subprocess.run(
            [str(validate), "--strict", "-k", version, *map(str, files)],
            capture_output=True,
            text=True,
        )
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        check(result.returncode == 0, f"kubernetes-validate failed for {version}")


def render_cluster_stores(tmp):
    """The overlay's documents, rendered from a copy with stand-in secrets."""
    copy = pathlib.Path(tmp) / "deploy"
    shutil.copytree(ROOT / "deploy", copy)
    for folder in [copy / "k8s" / "secrets", copy / "cluster-stores" / "secrets"]:
        for line in (folder / "README.md").read_text().splitlines():
            name = re.match(r"\| `([a-z.-]+)` \|", line)
            if name:
                (folder / name.group(1)).write_text("stand-in")
    result = subprocess.run(
        ["kubectl", "kustomize", str(copy / "cluster-stores")], capture_output=True, text=True
    )
    check(result.returncode == 0, f"kubectl kustomize deploy/cluster-stores: {result.stderr}")
    rendered = pathlib.Path(tmp) / "cluster-stores.yaml"
    rendered.write_text(result.stdout)
    return rendered, [d for d in yaml.safe_load_all(result.stdout) if d]


def check_cluster_stores(known):
    if shutil.which("kubectl") is None:
        print("SKIP deploy/cluster-stores: kubectl (its kustomize) is not installed")
        return
    with tempfile.TemporaryDirectory() as tmp:
        rendered, docs = render_cluster_stores(tmp)
        validate([rendered])
    kinds = {d["kind"] for d in docs}
    check("PersistentVolumeClaim" not in kinds, "cluster-stores: no PVC")
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    check(deployment["spec"]["replicas"] == 1, "cluster-stores: one replica per database")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    data = volumes.get(mounts.get(config["LSTMD_DATA_DIR"], ""), {})
    check("emptyDir" in data and "persistentVolumeClaim" not in data,
          "cluster-stores: the data dir is an emptyDir")
    check(config.get("LSTMD_BLOBS", "").startswith("s3://"), "cluster-stores: LSTMD_BLOBS s3://")
    refs = [s["secretRef"]["name"] for s in container["envFrom"] if "secretRef" in s]
    check(any("configMapRef" in s for s in container["envFrom"]), "cluster-stores: ConfigMap env")
    keys = set()
    for name in refs:
        check(name in secrets, f"cluster-stores: no Secret {name}")
        keys |= set(secrets.get(name, {}).get("data", {}))
    for key in ["LSTMD_RECORDS", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]:
        check(key in keys, f"cluster-stores: {key} comes from a Secret")
    if known is not None:
        for key in list(config) + sorted(keys):
            if key.startswith("LSTMD_"):
                check(key in known, f"cluster-stores: {key} is not a variable of `lstmd serve`")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {p["name"] for p in container["ports"]}
    headless = [d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    check(len(headless) == 1, "cluster-stores: one headless Service")
    for service in headless:
        for k, v in service["spec"]["selector"].items():
            check(labels.get(k) == v, f"cluster-stores: the headless Service selects {k}={v}")
        for p in service["spec"]["ports"]:
            check(p["targetPort"] in ports, f"cluster-stores: headless port {p['name']} targets nothing")
    check(int(config.get("LSTMD_MAX_CONNECTION_AGE", "0")) > 0, "cluster-stores: connections age")
    print(f"deploy/cluster-stores: {len(docs)} resources valid; consistent")


if __name__ == "__main__":
    sys.exit(main())
