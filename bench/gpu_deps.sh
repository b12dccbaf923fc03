#!/usr/bin/env bash
# Packs the libraries and headers `diffusion` builds against (OpenBLAS, LAPACKE, cairo, zlib,
# cJSON, giflib, stb) from this machine's Debian packages into one archive, for a GPU machine that
# has CUDA, cuDNN, gcc and CMake but none of these and no way to install them (../shared/DEVICE.md:
# nothing can be downloaded there). bench/gpu_check.sh --deps ARCHIVE unpacks it into the build
# folder and builds against it; the binaries find its libraries through their RPATH, so nothing
# else on that machine (PyTorch, the compilers) sees them.
#
#   bench/gpu_deps.sh ARCHIVE.tar.xz
#
# Run it where `bash scripts/setup.sh` has installed the build's packages. The archive holds:
#   include/       the headers the sources include (found with gcc -M), C library's headers left out
#   lib/           each library `diffusion` loads, by its soname, with the dependencies they load in
#                  turn (found with ldd), except the C and C++ runtimes, libgomp and CUDA's own; a
#                  lib*.so link for the libraries the build links directly
#   lib/pkgconfig/ openblas.pc and cairo.pc, relative to the archive's own folder
#   bin/pkg-config pkgconf, for a machine that lacks pkg-config (CMake's FindPkgConfig needs one)
# Debian 12's libraries need glibc 2.36 or newer: they load on a newer system (Ubuntu 24.04 has 2.39).
set -euo pipefail

OUTF="${1:?usage: bench/gpu_deps.sh ARCHIVE.tar.xz}"
case "$OUTF" in /*) ;; *) OUTF="$PWD/$OUTF" ;; esac
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
P="$WORK/deps"
mkdir -p "$P/include" "$P/lib/pkgconfig" "$P/bin"

for pc in openblas cairo; do
    pkg-config --exists "$pc" || { echo "gpu_deps: pkg-config knows no $pc: run scripts/setup.sh first" >&2; exit 1; }
done

# ---------------------------------------------------------------- headers
STB="$(dirname "$(find /usr/include -name stb_image.h -print -quit)")"
[ -n "$STB" ] || { echo "gpu_deps: no stb_image.h under /usr/include (libstb-dev)" >&2; exit 1; }
printf '%s\n' '#include <cairo.h>' '#include <zlib.h>' '#include <cjson/cJSON.h>' \
    '#include <gif_lib.h>' '#include <lapacke.h>' '#include <cblas.h>' '#include <stb_image.h>' \
    '#include <stb_image_write.h>' '#include <stb_image_resize.h>' > "$WORK/h.c"
# shellcheck disable=SC2046
gcc -M $(pkg-config --cflags cairo openblas) -I"$STB" "$WORK/h.c" | tr ' \\' '\n\n' |
    grep '^/usr/include/' | sort -u > "$WORK/headers"
while read -r h; do
    # the C library's and the kernel's headers are on every machine with gcc
    owner="$(dpkg -S "$h" 2> /dev/null | cut -d: -f1 | head -n 1)"
    case "$owner" in libc6-dev | linux-libc-dev) continue ;; esac
    case "$h" in
    */openblas*/*) dest="openblas/$(basename "$h")" ;;  # cflags point at include/openblas
    "$STB"/*) dest="$(basename "$h")" ;;                # found as <stb_image.h> in include/
    *) dest="${h#/usr/include/}" ;;
    esac
    mkdir -p "$(dirname "$P/include/$dest")"
    cp -L "$h" "$P/include/$dest"
done < "$WORK/headers"

# ---------------------------------------------------------------- libraries
# what a program linked like `diffusion` loads: build a tiny one against the same libraries
printf 'int main(void) { return 0; }\n' > "$WORK/m.c"
# shellcheck disable=SC2046
gcc -o "$WORK/m" "$WORK/m.c" -Wl,--no-as-needed $(pkg-config --libs cairo openblas) -lz -lcjson -lgif -llapacke
ldd "$WORK/m" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' > "$WORK/libs"
while read -r soname path; do
    case "$soname" in
    libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | ld-linux* | libgcc_s.so* | \
    libstdc++.so* | libgomp.so* | libcuda* | libcublas* | libcudnn*) continue ;;
    esac
    cp -L "$path" "$P/lib/$soname"
done < "$WORK/libs"
for l in openblas cairo z cjson gif lapacke; do
    so="$(awk -v l="lib$l.so." 'index($1, l) == 1 { print $1; exit }' "$WORK/libs")"
    [ -n "$so" ] || { echo "gpu_deps: lib$l is not among the loaded libraries" >&2; exit 1; }
    ln -sf "$so" "$P/lib/lib$l.so"
done

cat > "$P/lib/pkgconfig/openblas.pc" << 'EOF'
prefix=${pcfiledir}/../..
Name: openblas
Description: OpenBLAS (packed by bench/gpu_deps.sh)
Version: 0
Libs: -L${prefix}/lib -lopenblas
Cflags: -I${prefix}/include/openblas
EOF
cat > "$P/lib/pkgconfig/cairo.pc" << 'EOF'
prefix=${pcfiledir}/../..
Name: cairo
Description: cairo (packed by bench/gpu_deps.sh)
Version: 0
Libs: -L${prefix}/lib -lcairo
Cflags: -I${prefix}/include/cairo
EOF

# ---------------------------------------------------------------- pkg-config
PKGCONF="$(command -v pkgconf || true)"
if [ -n "$PKGCONF" ]; then
    cp -L "$PKGCONF" "$P/bin/pkgconf"
    ldd "$PKGCONF" | awk '$2 == "=>" && $1 ~ /^libpkgconf/ { print $3 }' | while read -r l; do
        cp -L "$l" "$P/lib/$(basename "$l")"
    done
    cat > "$P/bin/pkg-config" << 'EOF'
#!/bin/sh
# pkgconf from bench/gpu_deps.sh, with its own library beside it
here="$(cd "$(dirname "$0")" && pwd)"
LD_LIBRARY_PATH="$here/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/pkgconf" "$@"
EOF
    chmod +x "$P/bin/pkg-config"
fi

tar -C "$WORK" -cJf "$OUTF" deps
echo "gpu_deps: $(find "$P/include" -type f | wc -l) headers, $(find "$P/lib" -maxdepth 1 -type f | wc -l) libraries," \
    "$(du -sh "$P" | cut -f1) unpacked, $(du -h "$OUTF" | cut -f1) in $OUTF"
