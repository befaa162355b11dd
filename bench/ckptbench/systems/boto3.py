"""boto3: direct S3 from Python; transfers with 16 MiB parts and 16 threads."""
from ..common import MiB
from . import Direct


class Boto3(Direct):
    name = "boto3"
    order = 40
    summary = "direct S3 with boto3 (TransferConfig 16 MiB parts, 16 threads)"
    color = "#bcbd22"

    @classmethod
    def version(cls):
        try:
            import boto3
            return boto3.__version__
        except ImportError:
            return None

    @staticmethod
    def transfer_config():
        """The TransferConfig of its downloads and uploads."""
        from boto3.s3.transfer import TransferConfig
        return TransferConfig(multipart_chunksize=16 * MiB, max_concurrency=16)
