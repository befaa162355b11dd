"""The S3 Connector for PyTorch (s3torchconnector, AWS CRT underneath): direct S3 for PyTorch datasets. Needs a
Python with torch and s3torchconnector: BENCH_TORCH_PYTHON (default: this Python)."""
import os
import sys

from ..common import command_version
from . import Direct

TORCH_PYTHON = os.environ.get("BENCH_TORCH_PYTHON") or sys.executable


class S3Torch(Direct):
    name = "s3torch"
    order = 70
    summary = "the S3 Connector for PyTorch (S3MapDataset), in the Python BENCH_TORCH_PYTHON"
    color = "#ff7f0e"
    version_command = [TORCH_PYTHON, "-c", "import s3torchconnector, torch; "
                       "print('s3torchconnector', s3torchconnector.__version__, 'torch', torch.__version__)"]

    @classmethod
    def available(cls):
        return command_version(cls.version_command) is not None and "s3torchconnector" in command_version(cls.version_command)
