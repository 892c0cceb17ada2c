#!/usr/bin/env bash
# phantom-oci under containerd's own runc shim (containerd-shim-runc-v2):
# installs Debian's containerd, runc and busybox-static when missing, starts a
# private containerd (its own --root, --state, socket and config in a temp dir),
# imports a busybox OCI image built by scripts/make-oci-image.py, then runs
# crates/phantom-oci/tests/ctr.rs against it. Everything it started or created is
# stopped and removed at the end, however it ends.
#
#   scripts/test-oci.sh            # build phantom-oci, run the tests
#   OCI_KEEP=1 scripts/test-oci.sh # print the environment and keep containerd up
#                                  # (for cargo test -p phantom-oci --test ctr by hand)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# A skip is a failure where every isolation feature is required (CI, as root).
skip() {
  echo "skipped: $1"
  if [ "${PHANTOM_REQUIRE_ISOLATION:-}" = 1 ]; then exit 1; fi
  exit 0
}

if [ "$(id -u)" != 0 ]; then
  skip "phantom-oci's containerd tests need root (containerd, cgroups)"
fi
want=()
command -v containerd >/dev/null || want+=(containerd)
command -v runc >/dev/null || want+=(runc)
# The image and the tests' root filesystems copy /bin/busybox: it must be static.
static_elf() {  # no PT_INTERP program header: needs no dynamic loader
  python3 -c 'import struct,sys; d=open(sys.argv[1],"rb").read(); o,=struct.unpack_from("<Q",d,0x20); s,n=struct.unpack_from("<HH",d,0x36); sys.exit(any(struct.unpack_from("<I",d,o+i*s)[0]==3 for i in range(n)))' "$1"
}
if ! { [ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && static_elf /bin/busybox; }; then
  want+=(busybox-static)
fi
if [ ${#want[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null; then
    skip "${want[*]} missing and no apt-get to install them"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${want[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${want[@]}" >/dev/null; } \
    || skip "could not install ${want[*]}"
fi

work=$(mktemp -d /tmp/phantom-oci-test.XXXXXX)
# A container in a user namespace (root mapped to uid 100000) must reach its rootfs.
chmod 755 "$work"
ctd_pid=
cleanup() {
  set +e
  if [ -n "$ctd_pid" ]; then
    # Tasks and containers the tests left (they should leave none) go first, so
    # that no shim outlives containerd.
    for ns in $(ctr -a "$work/ctd.sock" namespaces ls -q 2>/dev/null); do
      for t in $(ctr -a "$work/ctd.sock" -n "$ns" tasks ls -q 2>/dev/null); do
        ctr -a "$work/ctd.sock" -n "$ns" tasks kill -s KILL "$t" >/dev/null 2>&1
        ctr -a "$work/ctd.sock" -n "$ns" tasks delete -f "$t" >/dev/null 2>&1
      done
      for c in $(ctr -a "$work/ctd.sock" -n "$ns" containers ls -q 2>/dev/null); do
        ctr -a "$work/ctd.sock" -n "$ns" containers delete "$c" >/dev/null 2>&1
      done
    done
    kill -TERM "$ctd_pid" 2>/dev/null
    wait "$ctd_pid" 2>/dev/null
  fi
  # containerd's overlay snapshots may still be mounted under its root.
  grep " $work/" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m"; done
  rm -rf "$work"
  # The namespace's parent cgroup that the containers' cgroups were made in (runc
  # leaves it too; the containers' own are checked by the tests).
  rmdir /sys/fs/cgroup/*/phantom-oci-test /sys/fs/cgroup/phantom-oci-test 2>/dev/null
  rmdir /run/containerd/runc/phantom-oci-test 2>/dev/null
  # The shims' default runtime directories, when empty (a system containerd's are
  # not: its socket is there).
  rmdir /run/containerd/runc /run/containerd/s /run/containerd/fifo /run/containerd 2>/dev/null
}
trap cleanup EXIT

cat > "$work/config.toml" <<EOF
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$work/ctd.sock"
[ttrpc]
  address = "$work/ctd.sock.ttrpc"
[debug]
  address = "$work/debug.sock"
[plugins."io.containerd.monitor.v1.cgroups"]
  no_prometheus = true
EOF
# `ctr container create` has no --runc-binary: the shim runs `runc` from its PATH,
# which for this containerd finds phantom-oci first (tests that pass --runc-binary
# say so anyway; the benchmark names Debian's runc explicitly).
# --workspace, as scripts/test.sh builds: `-p phantom-oci` alone would resolve
# phantom-engine's features for it only and build the engine a second time.
cargo build -q --workspace --all-targets
mkdir "$work/bin"
ln -s "$root/target/debug/phantom-oci" "$work/bin/runc"
PATH="$work/bin:$PATH" containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
ctd_pid=$!
for _ in $(seq 200); do
  ctr -a "$work/ctd.sock" version >/dev/null 2>&1 && break
  kill -0 "$ctd_pid" 2>/dev/null || { cat "$work/containerd.log"; echo "containerd did not start"; exit 1; }
  sleep 0.05
done
ctr -a "$work/ctd.sock" version >/dev/null

image=$(python3 scripts/make-oci-image.py "$work/busybox.tar")
ctr -a "$work/ctd.sock" -n phantom-oci-test images import "$work/busybox.tar" >/dev/null
ctr -a "$work/ctd.sock" -n phantom-oci-test images ls -q | grep -qx "$image" || { echo "image $image was not imported"; exit 1; }

export PHANTOM_OCI_CTR_SOCKET="$work/ctd.sock"
export PHANTOM_OCI_IMAGE="$image"
export PHANTOM_OCI_BINARY="${PHANTOM_OCI_BINARY:-$root/target/debug/phantom-oci}"
export PHANTOM_OCI_WORK="$work"
if [ -n "${OCI_KEEP:-}" ]; then
  echo "PHANTOM_OCI_CTR_SOCKET=$work/ctd.sock PHANTOM_OCI_IMAGE=$image PHANTOM_OCI_BINARY=$PHANTOM_OCI_BINARY PHANTOM_OCI_WORK=$work"
  echo "containerd pid $ctd_pid; press enter to stop it"
  read -r _
  exit 0
fi
if [ -n "${PHANTOM_OCI_RUN:-}" ]; then
  # Another command against this containerd instead of the tests (bench-oci.sh).
  $PHANTOM_OCI_RUN
  exit 0
fi
cargo test -q --workspace --test ctr -- --test-threads=1 "$@"
# The tests that need only root and a static busybox (they skip in `cargo test
# --workspace` on a machine without busybox-static, installed above).
if [ $# -eq 0 ]; then
  cargo test -q --workspace --test cri_spec --test hooks --test cgroup_v2
fi
