"""Policy check of the rendered overlays (what `kubectl apply -k` sends).

For every Deployment: gRPC readiness and liveness probes; a termination grace
period of at least preStop + drain deadline (MOSAIC_SHUTDOWN_TIMEOUT_SECS from
the ConfigMap) + a 5 s margin; CPU and memory requests and limits on every
container; runAsNonRoot; a read-only root filesystem on every container; a
PodDisruptionBudget and a NetworkPolicy selecting its pods; and a migration
Job in the render. That the Job runs before the Deployments roll is the
documented two-step apply (deploy/README.md: apply, wait for the Job, then
the rest), which nothing in the manifests expresses, so this cannot check it.

    .venv/bin/python deploy/k8s/policy.py <rendered.yaml>...

Prints one line per violation and exits 1 if there is any.
"""

import re
import sys

import yaml

MARGIN_SECS = 5


def pre_stop_secs(container):
    hook = (container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in hook:
        return int(hook["sleep"].get("seconds", 0))
    command = " ".join((hook.get("exec") or {}).get("command") or [])
    found = re.search(r"sleep\s+(\d+)", command)
    return int(found.group(1)) if found else 0


def selects(selector, labels):
    wanted = (selector or {}).get("matchLabels") or {}
    return bool(wanted) and all(labels.get(k) == v for k, v in wanted.items())


def check(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    problems = []
    config = {}
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "mosaic-config":
            config = d.get("data") or {}
    drain = int(config.get("MOSAIC_SHUTDOWN_TIMEOUT_SECS", 20))
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    for dep in deployments:
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]
        labels = pod["metadata"].get("labels") or {}
        spec = pod["spec"]
        security = spec.get("securityContext") or {}
        for c in spec["containers"]:
            where = f"{path}: Deployment {name} container {c['name']}"
            for probe in ("readinessProbe", "livenessProbe"):
                if "grpc" not in (c.get(probe) or {}):
                    problems.append(f"{where}: no gRPC {probe}")
            resources = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    if resource not in (resources.get(kind) or {}):
                        problems.append(f"{where}: no {resource} {kind[:-1]}")
            csec = c.get("securityContext") or {}
            if not (csec.get("runAsNonRoot") or security.get("runAsNonRoot")):
                problems.append(f"{where}: not runAsNonRoot")
            if not csec.get("readOnlyRootFilesystem"):
                problems.append(f"{where}: root filesystem not read-only")
            grace = int(spec.get("terminationGracePeriodSeconds", 30))
            need = pre_stop_secs(c) + drain + MARGIN_SECS
            if grace < need:
                problems.append(
                    f"{where}: grace {grace} s < preStop {pre_stop_secs(c)} s + drain {drain} s + {MARGIN_SECS} s"
                )
        if not any(selects(p["spec"].get("selector"), labels) for p in pdbs):
            problems.append(f"{path}: Deployment {name}: no PodDisruptionBudget selects its pods")
        if not any(selects(p["spec"].get("podSelector"), labels) for p in policies):
            problems.append(f"{path}: Deployment {name}: no NetworkPolicy selects its pods")
    jobs = [d for d in docs if d["kind"] == "Job" and "migrate" in d["metadata"]["name"]]
    if deployments and not jobs:
        problems.append(f"{path}: no migration Job")
    return problems, len(deployments)


def main():
    problems = []
    checked = 0
    for path in sys.argv[1:]:
        found, n = check(path)
        problems += found
        checked += n
    for p in problems:
        print(f"policy: {p}")
    if problems:
        sys.exit(1)
    print(f"policy: {checked} Deployments in {len(sys.argv) - 1} renders pass")


main()
