import os
import sys

# tests/ for `from reference import ...`; the repo root for `import numbagpt` without installing it.
_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (_HERE, os.path.dirname(_HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
