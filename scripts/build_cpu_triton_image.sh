#!/usr/bin/env bash
# Build a local CPU Triton image (no registry needed): Debian bookworm minbase with python3, numpy and
# libpython3.11, plus the tritonserver tree, Python backend and libraries from the nvidia-pytriton wheel.
# The layout mimics NVIDIA's images: tritonserver on PATH, backends in /opt/tritonserver/backends.
# usage: build_cpu_triton_image.sh [IMAGE]   (needs root, debootstrap and podman; cached by image name)
set -euo pipefail
image=${1:-localhost/greentune-triton-cpu:2.51}
if podman image exists "$image"; then
  echo "image $image already built"; exit 0
fi
cache=${GREENTUNE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/greentune}
rootfs_tar="$cache/bookworm-minbase-triton-rootfs.tar"
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
if [ ! -s "$rootfs_tar" ]; then
  debootstrap --variant=minbase --include=python3,python3-numpy,libpython3.11 bookworm "$work/root" >"$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log"; exit 1; }
  py=$(dirname "$0")/../.venv/bin/python
  [ -x "$py" ] || py=python3
  # The embedded server tree (fetched into the cache by `greentune doctor --fetch`).
  tree=$("$py" -c 'from tuner.server.embedded import embedded_triton; i = embedded_triton(); print(i.binary.parent.parent)')
  libs="$tree/../../nvidia_pytriton.libs"
  mkdir -p "$work/root/opt/tritonserver/bin" "$work/root/opt/tritonserver/lib" "$work/root/opt/tritonserver/backends"
  cp "$tree/bin/tritonserver" "$work/root/opt/tritonserver/bin/"
  cp -r "$tree/backends/python" "$work/root/opt/tritonserver/backends/"
  cp "$tree/python_backend_stubs/3.11/triton_python_backend_stub" "$work/root/opt/tritonserver/backends/python/"
  cp "$libs"/* "$work/root/opt/tritonserver/lib/"
  rm -f "$work/root/opt/tritonserver/lib/"libpython3-*   # the stub uses the image's own libpython3.11
  ln -sf /opt/tritonserver/bin/tritonserver "$work/root/usr/local/bin/tritonserver"
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/usr/share/doc" "$work/root/usr/share/man"
  mkdir -p "$cache"
  tar -C "$work/root" -cf "$rootfs_tar.tmp" . && mv "$rootfs_tar.tmp" "$rootfs_tar"
fi
podman import \
  --change 'ENV LD_LIBRARY_PATH=/opt/tritonserver/lib' \
  --change 'ENV PATH=/opt/tritonserver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["tritonserver", "--help"]' \
  "$rootfs_tar" "$image" >/dev/null
echo "built $image"
