#!/usr/bin/env bash
# Validates the Kubernetes manifests against the Kubernetes API schemas, strictly
# (unknown fields fail), for every version in MOSAIC_K8S_VERSIONS:
#   1. each manifest file on its own (kustomization.yaml files are kustomize
#      configuration, not API objects, and are skipped);
#   2. the base and each overlay as `kubectl kustomize` renders them, which is
#      exactly what `kubectl apply -k` sends.
# Needs .venv from deploy/local/setup.sh (kubernetes-validate, kubectl).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
k8s="$repo/deploy/k8s"
bin="$repo/.venv/bin"
read -r -a versions <<<"${MOSAIC_K8S_VERSIONS:-1.30.0 1.37.0}"

for tool in kubernetes-validate kubectl; do
  [ -x "$bin/$tool" ] || { echo "k8s: $bin/$tool missing: run deploy/local/setup.sh" >&2; exit 1; }
done

version_args=()
for v in "${versions[@]}"; do version_args+=(-k "$v"); done

# kubernetes-validate exits 0 on a kind it has no schema for (it only warns), so
# any output at all under --quiet counts as a failure.
validate() {
  local out
  if ! out=$("$bin/kubernetes-validate" --strict --quiet "${version_args[@]}" "$@" 2>&1) ||
    [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    return 1
  fi
}

mapfile -t files < <(find "$k8s" -name '*.yaml' ! -name kustomization.yaml | sort)
validate "${files[@]}"

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
renders=0
while IFS= read -r kustomization; do
  dir=$(dirname "$kustomization")
  name=${dir#"$k8s/"}
  out="$rendered/${name//\//-}.yaml"
  "$bin/kubectl" kustomize "$dir" >"$out" || { echo "k8s: kustomize $name failed" >&2; exit 1; }
  validate "$out" || { echo "k8s: rendered $name is invalid" >&2; exit 1; }
  renders=$((renders + 1))
done < <(find "$k8s" -name kustomization.yaml | sort)

echo "k8s: ${#files[@]} files and $renders kustomize renders valid against ${versions[*]}"
