#!/usr/bin/env bash
# Validates the Kubernetes manifests against the Kubernetes API schemas, strictly
# (unknown fields fail), for every version in MOSAIC_K8S_VERSIONS:
#   1. each manifest file on its own (kustomization.yaml files are kustomize
#      configuration, not API objects, and are skipped; so are directories named
#      transformers, which hold kustomize transformer configs, apiVersion builtin,
#      that the services' kustomizations run and that are never sent to a cluster);
#   2. every kustomization (the base, each service, the service template and each
#      overlay) as `kubectl kustomize` renders it, which for the overlays is
#      exactly what `kubectl apply -k` sends;
#   3. that no placeholder of the service template (mosaic-template) is left in
#      the base or an overlay: a service directory that forgot its component
#      label or its `transformers:` line would leave mosaic-template names,
#      labels and selectors behind;
#   4. the policy of deploy/k8s/policy.py on each overlay's render (probes,
#      grace period, resources, non-root, read-only root, PDB, NetworkPolicy).
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

mapfile -t files < <(find "$k8s" -name transformers -prune -o -name '*.yaml' ! -name kustomization.yaml -print | sort)
validate "${files[@]}"

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
renders=0
overlays=()
while IFS= read -r kustomization; do
  dir=$(dirname "$kustomization")
  name=${dir#"$k8s/"}
  out="$rendered/${name//\//-}.yaml"
  "$bin/kubectl" kustomize "$dir" >"$out" || { echo "k8s: kustomize $name failed" >&2; exit 1; }
  validate "$out" || { echo "k8s: rendered $name is invalid" >&2; exit 1; }
  case $name in
    base | overlays/*)
      if grep -nE 'mosaic-template([^-[:alnum:]]|$)' "$out" >&2; then
        echo "k8s: rendered $name still holds template placeholders (mosaic-template)" >&2
        exit 1
      fi
      ;;
  esac
  case $name in overlays/*) overlays+=("$out") ;; esac
  renders=$((renders + 1))
done < <(find "$k8s" -name transformers -prune -o -name kustomization.yaml -print | sort)

"$bin/python" "$k8s/policy.py" "${overlays[@]}"

echo "k8s: ${#files[@]} files and $renders kustomize renders valid against ${versions[*]}"
