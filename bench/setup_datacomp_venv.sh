#!/usr/bin/env bash
# A virtualenv of its own for one of DataComp's (mlfoundations/datacomp) reference tools. DataComp
# pins old versions (webdataset 0.2.31, numpy 1.23, pandas 1.5, pyarrow 7, torch 1.13, Python 3.10)
# that cannot share curate's venv.
#
#   git clone https://github.com/mlfoundations/datacomp PATH/TO/datacomp   # used: commit 4a8df19
#
#   bash bench/setup_datacomp_venv.sh PATH/TO/datacomp [VENV]             # VENV: bench/out/datacomp-venv
#   export DATACOMP_DIR=PATH/TO/datacomp DATACOMP_PYTHON=VENV/bin/python
#       resharder.py, for bench/bench_reshard.py
#
#   bash bench/setup_datacomp_venv.sh --filter PATH/TO/datacomp [VENV]    # bench/out/datacomp-filter-venv
#   export DATACOMP_DIR=PATH/TO/datacomp DATACOMP_FILTER_PYTHON=VENV/bin/python
#       baselines.py (baselines/apply_filter.py), for bench/bench_apply_filter.py; its gcld3 builds
#       from source and needs protoc (Debian: apt-get install protobuf-compiler libprotobuf-dev)
#
# Installs exactly the packages the tool imports, with every version (theirs and their
# dependencies') constrained to DataComp's own requirements.txt. PYTHON picks the interpreter
# (default: the first python3.10 found, on PATH or under pyenv).
set -euo pipefail

tool=resharder
if [[ ${1:-} == --filter ]]; then
    tool=filter
    shift
fi
if [[ $# -lt 1 || ! -f "$1/resharder.py" || ! -f "$1/baselines.py" || ! -f "$1/requirements.txt" ]]; then
    echo "usage: $0 [--filter] PATH/TO/datacomp [VENV]  (a datacomp checkout: resharder.py, baselines.py, requirements.txt)" >&2
    exit 2
fi
if [[ $tool == filter ]] && ! command -v protoc >/dev/null; then
    echo "gcld3 (imported by apply_filter.py) builds from source with protoc: apt-get install protobuf-compiler libprotobuf-dev" >&2
    exit 2
fi
datacomp=$(cd "$1" && pwd)
bench=$(cd "$(dirname "$0")" && pwd)
if [[ $tool == filter ]]; then default_venv=$bench/out/datacomp-filter-venv; else default_venv=$bench/out/datacomp-venv; fi
venv=${2:-$default_venv}
# DataComp's pins (environment.yml: Python 3.10.8) have wheels or buildable sdists for 3.10 only.
python=${PYTHON:-}
for candidate in python3.10 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10*/bin/python3.10; do
    # A pyenv shim exists for every installed version but runs only the selected ones: try it.
    if [[ -z "$python" ]] && "$candidate" -c "" 2>/dev/null; then python=$candidate; fi
done
if [[ -z "$python" ]]; then
    echo "no Python 3.10 found (DataComp's pinned packages need it); set PYTHON=/path/to/python3.10" >&2
    exit 2
fi
"$python" -m venv "$venv"
# The pinned pyyaml 5.4.1 (webdataset needs it) has no wheel for Python 3.10 and its sdist builds only
# with Cython < 3; PIP_CONSTRAINT, unlike -c, also reaches pip's isolated build environments.
build=$(mktemp)
trap 'rm -f "$build"' EXIT
echo "cython<3" >"$build"
pip_install() { PIP_CONSTRAINT="$build $datacomp/requirements.txt" "$venv/bin/pip" install --quiet "$@"; }

if [[ $tool == resharder ]]; then
    # resharder.py's third-party imports: cv2, numpy, pyarrow, simdjson, tqdm, webdataset, cloudpathlib, img2dataset.
    pip_install opencv-python-headless numpy pyarrow pysimdjson tqdm webdataset cloudpathlib img2dataset
    # The resharder must at least parse its arguments in this venv.
    "$venv/bin/python" "$datacomp/resharder.py" --help >/dev/null
    echo "resharder.py runs with webdataset $("$venv/bin/python" -c 'from importlib.metadata import version; print(version("webdataset"))')"
    echo "export DATACOMP_DIR=$datacomp DATACOMP_PYTHON=$(cd "$venv" && pwd)/bin/python"
    exit 0
fi

# baselines.py's and apply_filter.py's third-party imports. fasttext 0.9.2's setup.py imports pybind11
# before it declares it, so it is built without isolation against the pinned pybind11.
pip_install pybind11 wheel "setuptools<70"
pip_install --no-build-isolation fasttext
pip_install fsspec gcld3 nltk numpy pandas pyarrow torch tqdm
# baselines.py must at least parse its arguments in this venv, through the bench's wrapper.
DATACOMP_DIR=$datacomp DATACOMP_FASTTEXT_MODEL=unused "$venv/bin/python" "$bench/datacomp_apply_filter.py" --help >/dev/null
echo "baselines.py runs with pandas $("$venv/bin/python" -c 'import pandas; print(pandas.__version__)'), torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)')"
echo "export DATACOMP_DIR=$datacomp DATACOMP_FILTER_PYTHON=$(cd "$venv" && pwd)/bin/python"
