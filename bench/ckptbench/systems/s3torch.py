"""The S3 Connector for PyTorch (s3torchconnector, AWS CRT underneath): direct S3 for PyTorch datasets and
checkpoints (S3MapDataset, S3Checkpoint, S3StorageWriter/S3StorageReader). Needs a Python with torch and
s3torchconnector[dcp]: BENCH_TORCH_PYTHON (default: this Python); as root, bench/run installs them there with
pip (CPU torch from download.pytorch.org) when missing."""
import os
import sys

from ..common import command_version, log, sh
from . import Direct

TORCH_PYTHON = os.environ.get("BENCH_TORCH_PYTHON") or sys.executable
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class S3Torch(Direct):
    name = "s3torch"
    order = 70
    summary = ("the S3 Connector for PyTorch (S3MapDataset, S3Checkpoint, S3StorageWriter/Reader), in the "
               "Python BENCH_TORCH_PYTHON")
    color = "#ff7f0e"
    version_command = [TORCH_PYTHON, "-c", "import s3torchconnector, torch; "
                       "print('s3torchconnector', s3torchconnector.__version__, 'torch', torch.__version__)"]

    @classmethod
    def available(cls):
        found = command_version(cls.version_command)
        return found is not None and "s3torchconnector" in found

    @classmethod
    def install(cls):
        """pip install of CPU torch (if missing) and s3torchconnector[dcp] into TORCH_PYTHON; a failure (a
        Python that refuses pip, no network) leaves the system unavailable, skipped with a note."""
        log(f"bench: installing torch (CPU) and s3torchconnector[dcp] into {TORCH_PYTHON}")
        if sh([TORCH_PYTHON, "-c", "import torch"], check=False).returncode != 0:
            sh([TORCH_PYTHON, "-m", "pip", "install", "-q", "torch", "--index-url", TORCH_CPU_INDEX], check=False)
        sh([TORCH_PYTHON, "-m", "pip", "install", "-q", "s3torchconnector[dcp]"], check=False)
