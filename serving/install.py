"""Where the pip-installed Triton lives and how its processes must be started.

The `nvidia-pytriton` wheel holds the `tritonserver` binary, its Python backend and one backend
stub per Python version. The stub runs the first `python` on PATH, so this environment's `bin/`
goes first, and the interpreter's own `lib/` joins LD_LIBRARY_PATH so the stub loads the same
libpython.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

from plantdx.exceptions import ServerError


def pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise ServerError(
            "nvidia-pytriton is not installed: it provides the Triton server"
        ) from exc
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").is_file():
        raise ServerError(f"no tritonserver binary under {root}")
    return root


def _libs_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).parent.parent / "nvidia_pytriton.libs"


def prepare_backend_dir(cache_dir: Path | None = None) -> Path:
    """A backend directory with the Python backend and the stub for this Python version."""
    root = pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the Triton wheel has no Python-backend stub for Python {version}")
    base = cache_dir or Path(tempfile.gettempdir()) / f"plantdx-backends-{os.getuid()}-{version}"
    python_dir = base / "python"
    marker = python_dir / ".source"
    if not (marker.is_file() and marker.read_text() == str(root)):
        tmp = Path(tempfile.mkdtemp(prefix=".backends-", dir=base.parent))
        shutil.copytree(root / "backends" / "python", tmp / "python")
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        os.chmod(tmp / "python" / "triton_python_backend_stub", 0o755)
        (tmp / "python" / ".source").write_text(str(root))
        shutil.rmtree(base, ignore_errors=True)
        os.rename(tmp, base)
    return base


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    libdirs = [str(_libs_dir()), str(sysconfig.get_config_var("LIBDIR") or "")]
    if env.get("LD_LIBRARY_PATH"):
        libdirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(d for d in libdirs if d)
    # The stub must see this environment's packages even when started from elsewhere.
    env.setdefault("PYTHONNOUSERSITE", "1")
    return env
