#!/usr/bin/env bash
# Unpacks Debian's nginx into .cache/nginx for the edge tests: no root, no system install.
# `apt-get download` fetches the .deb, `dpkg -x` unpacks it; a library the machine lacks is
# fetched the same way and found through LD_LIBRARY_PATH by the wrapper .cache/nginx/nginx.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/.cache/nginx"
[ -x "$out/nginx" ] && "$out/nginx" -v 2>/dev/null && exit 0

command -v apt-get >/dev/null && command -v dpkg >/dev/null || {
  echo "fetch_nginx: needs apt-get and dpkg (a Debian or Ubuntu machine)" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/debs" "$out/root"
cd "$out/debs"

download() {
  apt-get download -q "$@" 2>/dev/null && return 0
  # A fresh machine may have no package lists yet; updating them needs root but installs nothing.
  [ "$(id -u)" = 0 ] && apt-get update -qq && apt-get download -q "$@"
}

download nginx
dpkg -x nginx_*.deb "$out/root"
for lib in $(ldd "$out/root/usr/sbin/nginx" | awk '/not found/ {print $1}'); do
  case "$lib" in
    libpcre2-8.so.*) pkg=libpcre2-8-0 ;;
    libssl.so.3|libcrypto.so.3) pkg=libssl3 ;;
    libz.so.*) pkg=zlib1g ;;
    libcrypt.so.*) pkg=libcrypt1 ;;
    *) echo "fetch_nginx: no package known for $lib" >&2; exit 1 ;;
  esac
  ls "$pkg"_*.deb >/dev/null 2>&1 || download "$pkg"
  dpkg -x "$pkg"_*.deb "$out/root"
done

cat >"$out/nginx" <<'EOF'
#!/bin/sh
d="$(cd "$(dirname "$0")" && pwd)/root"
p=""
for x in "$d"/usr/lib/*-linux-gnu "$d"/lib/*-linux-gnu; do [ -d "$x" ] && p="$p${p:+:}$x"; done
[ -n "$p" ] && export LD_LIBRARY_PATH="$p${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$d/usr/sbin/nginx" "$@"
EOF
chmod +x "$out/nginx"
"$out/nginx" -v
