#!/usr/bin/env bash
# Sourced by the llama.cpp oracle and benchmark scripts:
#   . tools/llamacpp_env.sh DIR
# makes DIR/venv-llamacpp with llama-cpp-python built from its source
# release for this CPU (GGML_NATIVE=ON; ~10 minutes on 2 cores the first
# time), the gguf package of the same llama.cpp, and what llama.cpp's
# convert_hf_to_gguf.py imports; sets `py` (that venv's python) and
# `llama_dir` (the llama.cpp tree inside the source release).
LLAMA_CPP_PYTHON=0.3.36
llamacpp_root=${1:?usage: . tools/llamacpp_env.sh DIR}
mkdir -p "$llamacpp_root"
py="$llamacpp_root/venv-llamacpp/bin/python"
src="$llamacpp_root/llama_cpp_python-$LLAMA_CPP_PYTHON"
llama_dir="$src/vendor/llama.cpp"
if [ ! -f "$llama_dir/convert_hf_to_gguf.py" ]; then
  [ -x "$py" ] || python3 -m venv "$llamacpp_root/venv-llamacpp"
  "$py" -m pip download --quiet --no-deps --no-binary llama-cpp-python \
    "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$llamacpp_root/sdist"
  tar -xzf "$llamacpp_root/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$llamacpp_root"
fi
if ! "$py" -c "import llama_cpp, gguf, numpy, torch, safetensors, transformers" 2>/dev/null; then
  [ -x "$py" ] || python3 -m venv "$llamacpp_root/venv-llamacpp"
  "$py" -m pip install --quiet "$llama_dir/gguf-py" numpy sentencepiece safetensors transformers torch
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF" \
    "$py" -m pip install --quiet "$src"
fi
