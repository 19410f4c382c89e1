#!/usr/bin/env bash
# A virtualenv of its own for DataComp's resharder.py (mlfoundations/datacomp), the reference tool
# that bench/bench_reshard.py compares `curate run reshard` with. DataComp pins old versions
# (webdataset 0.2.31, numpy 1.23, pyarrow 7, Python 3.10) that cannot share curate's venv.
#
#   git clone https://github.com/mlfoundations/datacomp PATH/TO/datacomp   # used: commit 4a8df19
#   bash bench/setup_datacomp_venv.sh PATH/TO/datacomp [VENV]     # VENV: bench/out/datacomp-venv
#   export DATACOMP_DIR=PATH/TO/datacomp DATACOMP_PYTHON=VENV/bin/python
#
# Installs exactly the packages resharder.py imports, with every version (theirs and their
# dependencies') constrained to DataComp's own requirements.txt. PYTHON picks the interpreter
# (default: the first python3.10 found, on PATH or under pyenv).
set -euo pipefail

if [[ $# -lt 1 || ! -f "$1/resharder.py" || ! -f "$1/requirements.txt" ]]; then
    echo "usage: $0 PATH/TO/datacomp [VENV]  (a datacomp checkout with resharder.py and requirements.txt)" >&2
    exit 2
fi
datacomp=$(cd "$1" && pwd)
venv=${2:-$(dirname "$0")/out/datacomp-venv}
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
# resharder.py's third-party imports: cv2, numpy, pyarrow, simdjson, tqdm, webdataset, cloudpathlib, img2dataset.
# The pinned pyyaml 5.4.1 (webdataset needs it) has no wheel for Python 3.10 and its sdist builds only
# with Cython < 3; PIP_CONSTRAINT, unlike -c, also reaches pip's isolated build environments.
build=$(mktemp)
trap 'rm -f "$build"' EXIT
echo "cython<3" >"$build"
PIP_CONSTRAINT="$build $datacomp/requirements.txt" "$venv/bin/pip" install --quiet \
    opencv-python-headless numpy pyarrow pysimdjson tqdm webdataset cloudpathlib img2dataset
"$venv/bin/python" - "$datacomp" <<'EOF'
import subprocess, sys
from importlib.metadata import version
# The resharder must at least parse its arguments in this venv.
subprocess.run([sys.executable, f"{sys.argv[1]}/resharder.py", "--help"], check=True, capture_output=True)
print(f"resharder.py runs with webdataset {version('webdataset')} on Python {sys.version.split()[0]}")
EOF
echo "export DATACOMP_DIR=$datacomp DATACOMP_PYTHON=$(cd "$venv" && pwd)/bin/python"
