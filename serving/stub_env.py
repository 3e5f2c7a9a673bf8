"""The environment Triton runs with, which every Python-backend stub inherits: an allow-list.

Model code runs in the stubs, so they get only what running it needs: the paths and the
locale, Python's and the numeric libraries' settings, CUDA/NVIDIA/Triton settings, and
plantdx's capture settings. The admin key is not there (nor any variable holding it, nor any
whose name says key, secret, token, password or credential). Cloud credentials are passed only
where the server needs them: AWS_* when the capture or the model repository is on S3,
GOOGLE_* / AZURE_* for a gs:// / as:// repository (Triton itself reads the repository with
them), and the proxy settings with them.

This keeps secrets out of what a model can print or a crash report can carry; it does not
make a model that runs hostile code harmless: a stub runs as the server's user and can read
the server's own /proc/PID/cmdline, where Triton 2.51 requires the key (serving/admin_key.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from plantdx.capture.settings import ENV_DESTINATION

_NAMES = {
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "LD_LIBRARY_PATH",
    "VIRTUAL_ENV",
    "MPLCONFIGDIR",
    "XDG_CACHE_HOME",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
}
_PREFIXES = (
    "LC_",
    "PYTHON",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "ORT_",
    "CUDA_",
    "NVIDIA_",
    "TRITON_",
    "PLANTDX_",
)
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL", re.IGNORECASE)
_PROXIES = {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"}
_CLOUD = {"s3": ("AWS_",), "gs": ("GOOGLE_", "GCLOUD_"), "as": ("AZURE_",)}


def _scheme(location: str) -> str:
    return location.split("://", 1)[0].lower() if "://" in location else ""


def scrubbed(
    env: Mapping[str, str], *, repository: str = "", secret_values: tuple[str, ...] = ()
) -> dict[str, str]:
    """`env` reduced to what the server and its stubs need (see the module's docstring)."""
    schemes = {_scheme(repository), _scheme(env.get(ENV_DESTINATION, ""))}
    cloud = tuple(p for s in schemes for p in _CLOUD.get(s, ()))
    return {
        name: value
        for name, value in env.items()
        if _needed(name, cloud) and not any(_holds(value, secret) for secret in secret_values)
    }


def _needed(name: str, cloud: tuple[str, ...]) -> bool:
    if cloud and (name.startswith(cloud) or name in _PROXIES):
        return True
    return name in _NAMES or (name.startswith(_PREFIXES) and not _SECRET_NAME.search(name))


def _holds(value: str, secret: str) -> bool:
    """Whether `value` carries the secret (only secrets long enough not to match by chance)."""
    return len(secret) >= 8 and secret in value
