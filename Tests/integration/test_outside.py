"""Failures found by the outside testers' runs (pjdfstest, fsx, stress-ng, crash trials, checkpoint history by
hand), each reduced to its smallest reproduction through a real mount of a real SeaweedFS, checked with boto3."""
import os
import time

from test_correctness import read
from test_versions import s3_versions
from test_write_back import flush, sha


def test_keep_every_version_keeps_saves_made_by_write_temp_then_rename(server, bucket, mounts):
    """`--keep-every-version` promises one S3 version per save. A save made the safe way (write `model.pt.tmp`,
    close, `os.replace` onto `model.pt`: torch.save + os.replace, safetensors/transformers' atomic saves) is a
    save of `model.pt` as much as an open-write-close of it is; 6 such saves 0.1 s apart made 1 version: the
    rename replaced the version of `model.pt` still waiting out `--upload-delay` (it was dropped, never uploaded),
    so the history the option exists for is lost for the most common checkpoint idiom."""
    server.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    mp, _ = mounts.mount(f"s3://{bucket}", None, None, "--keep-every-version", "--upload-delay", "2")
    saves = [os.urandom(200_000 + i) for i in range(5)]
    for data in saves:
        with open(f"{mp}/model.pt.tmp", "wb") as f:
            f.write(data)
        os.replace(f"{mp}/model.pt.tmp", f"{mp}/model.pt")
        time.sleep(0.1)
    flush(mounts, mp)
    assert sha(read(f"{mp}/model.pt")) == sha(saves[-1])
    versions = s3_versions(server, bucket, "model.pt")
    got = [sha(server.s3.get_object(Bucket=bucket, Key="model.pt", VersionId=v[0])["Body"].read())
           for v in reversed(versions)]
    assert got == [sha(d) for d in saves], f"{len(versions)} version(s) for {len(saves)} saves"
