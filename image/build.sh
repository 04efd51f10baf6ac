#!/usr/bin/env bash
# The smesh image (agent and controller), built without a container runtime or registry:
# mmdebstrap makes a Debian rootfs from Debian's packages, with smesh's wheel (and its
# dependencies' wheels from PyPI) in a venv at /opt/smesh and the compiled BPF objects in
# /usr/lib/smesh/bpf; umoci turns it into an OCI image layout. Run by `make image`:
#
#   image/build.sh OUT_DIR TAG     e.g. image/build.sh build/image 0.1.0
#
# Result: OUT_DIR/smesh, an OCI layout holding smesh:TAG (publish it with skopeo, README).
set -euo pipefail
out=${1:?usage: image/build.sh OUT_DIR TAG}
tag=${2:?usage: image/build.sh OUT_DIR TAG}
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
suite=bookworm  # Debian 12: python3 is 3.11, the version smesh needs at least
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# Run time only: Python, libbpf (loaded by ctypes), iproute2 and nftables (capture's
# fallback mode), CA certificates (the API server's chain is verified with the cluster's
# CA, but a kubeconfig may name a public one).
packages=python3,python3-venv,libbpf1,iproute2,nftables,ca-certificates

work=$(mktemp -d "${TMPDIR:-/tmp}/smesh-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/wheels" "$out"

# smesh and every dependency as wheels for this Python (Debian 12's 3.11, same as the rootfs).
"$python" -m pip wheel --quiet --wheel-dir "$work/wheels" "$root"
ls "$root"/build/bpf/*.bpf.o >/dev/null  # `make bpf` first

mmdebstrap --variant=apt --quiet \
  --include="$packages" \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="mkdir -p \"\$1/tmp/wheels\" \"\$1/usr/lib/smesh/bpf\"" \
  --customize-hook="cp $work/wheels/*.whl \"\$1/tmp/wheels/\"" \
  --customize-hook="cp $root/build/bpf/*.bpf.o \"\$1/usr/lib/smesh/bpf/\"" \
  --customize-hook='chroot "$1" python3 -m venv /opt/smesh' \
  --customize-hook='chroot "$1" /opt/smesh/bin/pip install --quiet --no-index --no-compile --find-links /tmp/wheels smesh' \
  --customize-hook='chroot "$1" /opt/smesh/bin/python -m compileall -q /opt/smesh/lib' \
  --customize-hook='rm -rf "$1/tmp/wheels" "$1/root/.cache"' \
  --customize-hook='ln -s /opt/smesh/bin/smesh /opt/smesh/bin/smesh-cni "$1/usr/local/bin/"' \
  --customize-hook='echo "smesh:x:65532:65532:smesh:/nonexistent:/usr/sbin/nologin" >> "$1/etc/passwd"' \
  --customize-hook='echo "smesh:x:65532:" >> "$1/etc/group"' \
  "$suite" "$work/rootfs.tar" \
  "deb $mirror $suite main" "deb $mirror $suite-updates main" \
  "deb $security $suite-security main"

layout="$out/smesh"
rm -rf "$layout"
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci raw add-layer --image "$layout:$tag" "$work/rootfs.tar"
# Non-root by default (the controller); the agent's DaemonSet runs it as root with the
# capabilities it names.
umoci config --image "$layout:$tag" \
  --config.user 65532:65532 \
  --config.entrypoint smesh \
  --config.env PATH=/opt/smesh/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.env SMESH_BPF_DIR=/usr/lib/smesh/bpf \
  --config.workingdir / \
  --config.label org.opencontainers.image.title=smesh \
  --config.label "org.opencontainers.image.version=$tag"
umoci gc --layout "$layout"
echo "built $layout:$tag"
