#!/usr/bin/env bash
# Installs phantom into a prefix: the three binaries, the zygote library, man pages and
# shell completions. Running it again replaces the same files (idempotent).
#
#   ./scripts/install.sh [PREFIX]              # default /usr/local as root, else ~/.local
#   ./scripts/install.sh --uninstall [PREFIX]  # removes exactly what the install listed
#
# Environment:
#   PHANTOM_SKIP_BUILD=1      do not run `cargo build --release` (the binaries must exist)
#   PHANTOM_INSTALL_FROM=DIR  take the binaries and library from DIR (default target/release)
#
# What goes where:
#   PREFIX/bin/{phantom,phantom-supervisor,phantom-mcp}
#   PREFIX/lib/phantom/libphantom_zygote.so      (the engine looks in ../lib/phantom/ next to the binary)
#   PREFIX/share/man/man1/phantom*.1
#   PREFIX/share/bash-completion/completions/phantom{,-supervisor,-mcp}
#   PREFIX/share/zsh/site-functions/_phantom{,-supervisor,-mcp}
#   PREFIX/share/fish/vendor_completions.d/phantom{,-supervisor,-mcp}.fish
#   PREFIX/lib/phantom/install-manifest           (the list --uninstall removes)
set -euo pipefail
cd "$(dirname "$0")/.."

uninstall=0
if [ "${1:-}" = "--uninstall" ]; then
  uninstall=1
  shift
fi
case "${1:-}" in
  -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  -*) echo "install.sh: unknown option $1 (expected --uninstall or a PREFIX)" >&2; exit 2 ;;
esac
if [ -n "${1:-}" ]; then
  prefix=$1
elif [ "$(id -u)" = 0 ]; then
  prefix=/usr/local
else
  prefix=$HOME/.local
fi
prefix=$(realpath -m "$prefix")
manifest=$prefix/lib/phantom/install-manifest

if [ "$uninstall" = 1 ]; then
  if [ ! -f "$manifest" ]; then
    echo "install.sh: nothing to uninstall: $manifest does not exist" >&2
    exit 1
  fi
  while IFS= read -r file; do
    [ -n "$file" ] || continue
    rm -f -- "$file" && echo "removed $file"
  done <"$manifest"
  rm -f -- "$manifest"
  # Directories this install created, when they are left empty.
  for dir in "$prefix/lib/phantom" "$prefix/share/bash-completion/completions" \
    "$prefix/share/bash-completion" "$prefix/share/zsh/site-functions" "$prefix/share/zsh" \
    "$prefix/share/fish/vendor_completions.d" "$prefix/share/fish"; do
    rmdir -- "$dir" 2>/dev/null || true
  done
  echo "phantom uninstalled from $prefix"
  exit 0
fi

from=${PHANTOM_INSTALL_FROM:-target/release}
if [ "${PHANTOM_SKIP_BUILD:-0}" != 1 ]; then
  echo "== cargo build --release"
  cargo build --release
fi
binaries="phantom phantom-supervisor phantom-mcp"
library=libphantom_zygote.so
for f in $binaries $library; do
  if [ ! -f "$from/$f" ]; then
    echo "install.sh: $from/$f is missing (build it with \`cargo build --release\`, or unset PHANTOM_SKIP_BUILD)" >&2
    exit 1
  fi
done

installed=()
put() { # put MODE SOURCE DEST
  install -D -m "$1" "$2" "$3"
  installed+=("$3")
}
for f in $binaries; do
  put 755 "$from/$f" "$prefix/bin/$f"
done
put 644 "$from/$library" "$prefix/lib/phantom/$library"

# Man pages and completions come from the installed binary's clap definitions.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$prefix/bin/phantom" man --dir "$scratch/man" >/dev/null
for page in "$scratch"/man/*.1; do
  put 644 "$page" "$prefix/share/man/man1/$(basename "$page")"
done
"$prefix/bin/phantom-supervisor" --man >"$scratch/man/phantom-supervisor.1"
"$prefix/bin/phantom-mcp" --man >"$scratch/man/phantom-mcp.1"
for page in "$scratch"/man/phantom-supervisor.1 "$scratch"/man/phantom-mcp.1; do
  put 644 "$page" "$prefix/share/man/man1/$(basename "$page")"
done
"$prefix/bin/phantom" completions bash >"$scratch/phantom.bash"
"$prefix/bin/phantom" completions zsh >"$scratch/_phantom"
"$prefix/bin/phantom" completions fish >"$scratch/phantom.fish"
for bin in phantom-supervisor phantom-mcp; do
  "$prefix/bin/$bin" --completions bash >"$scratch/$bin.bash"
  "$prefix/bin/$bin" --completions zsh >"$scratch/_$bin"
  "$prefix/bin/$bin" --completions fish >"$scratch/$bin.fish"
done
for bin in phantom phantom-supervisor phantom-mcp; do
  put 644 "$scratch/$bin.bash" "$prefix/share/bash-completion/completions/$bin"
  put 644 "$scratch/_$bin" "$prefix/share/zsh/site-functions/_$bin"
  put 644 "$scratch/$bin.fish" "$prefix/share/fish/vendor_completions.d/$bin.fish"
done

# A previous install's files that this one no longer ships are removed too.
if [ -f "$manifest" ]; then
  while IFS= read -r old; do
    keep=0
    for f in "${installed[@]}"; do [ "$f" = "$old" ] && keep=1 && break; done
    [ "$keep" = 1 ] || rm -f -- "$old"
  done <"$manifest"
fi
printf '%s\n' "${installed[@]}" >"$manifest"

echo "installed into $prefix:"
printf '  %s\n' "${installed[@]}"
case ":$PATH:" in
  *":$prefix/bin:"*) ;;
  *) echo "note: $prefix/bin is not on PATH" ;;
esac
echo "uninstall with: $(pwd)/scripts/install.sh --uninstall $prefix"
