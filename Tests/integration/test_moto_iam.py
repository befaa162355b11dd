"""A server that checks SigV4 with session tokens for real: moto_server with IAM authentication on.

moto recomputes each request's signature with the caller's secret and, for temporary credentials, requires the
session token that STS gave with them (moto/iam/access_control.py; Tests/Harness/moto_iam_server.py fixes its
handling of encoded query strings, which refuses even boto3's own listings with a delimiter). The test makes an IAM user and a role there,
then ckptfs assumes the role through moto's STS (AssumeRole signed with the user's keys) and talks to moto's S3 with
the role's session credentials: HeadBucket and a listing (`ckptfs check`), then a mount that writes and reads a
file. The same credentials with a wrong session token are refused.
"""
import hashlib
import json
import os
import socket
import subprocess
import sys
import urllib.request

import boto3
import pytest
from botocore.config import Config

from conftest import ROOT, wait_until

# Requests moto serves before it starts checking signatures: exactly the setup calls below.
SETUP_CALLS = 7


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def moto(tmp_path):
    pytest.importorskip("moto.server", reason="moto[server] is not installed (scripts/setup installs it)")
    port = free_port()
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(SETUP_CALLS), MOTO_ACCOUNT_ID="123456789012")
    log = open(tmp_path / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "Tests", "Harness", "moto_iam_server.py"), "-H", "127.0.0.1",
                             "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return True
        except Exception:
            return False
    assert wait_until(up, timeout=30), open(tmp_path / "moto.log").read()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def client(service, url, **kw):
    return boto3.client(service, endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id=kw.get("ak", "setup"), aws_secret_access_key=kw.get("sk", "setup"),
                        aws_session_token=kw.get("token"), config=Config(s3={"addressing_style": "path"}))


def test_assumed_role_session_credentials_pass_moto_iam_auth(moto, mounts, tmp_path):
    iam = client("iam", moto)
    # 1-5: a user with keys that may assume a role which may use S3; 6-7: a bucket with an object.
    user = iam.create_user(UserName="trainer")["User"]
    key = iam.create_access_key(UserName="trainer")["AccessKey"]
    iam.put_user_policy(UserName="trainer", PolicyName="assume", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}]}))
    role = iam.create_role(RoleName="ckpt", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": user["Arn"]}, "Action": "sts:AssumeRole"}]}))["Role"]
    iam.put_role_policy(RoleName="ckpt", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    s3 = client("s3", moto)
    s3.create_bucket(Bucket="ckpt")
    s3.put_object(Bucket="ckpt", Key="seed.bin", Body=b"seed" * 1000)
    # From here on moto checks every signature: the setup credentials are refused.
    with pytest.raises(Exception) as refused:
        client("s3", moto).list_objects_v2(Bucket="ckpt")
    assert "InvalidAccessKeyId" in str(refused.value) or "SignatureDoesNotMatch" in str(refused.value) or "403" in str(refused.value)

    config = tmp_path / "config"
    config.write_text(f"""[profile trainer]
aws_access_key_id = {key['AccessKeyId']}
aws_secret_access_key = {key['SecretAccessKey']}

[profile ckpt]
role_arn = {role['Arn']}
source_profile = trainer
role_session_name = ckptfs-test
region = us-east-1
""")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}
    env.update(AWS_CONFIG_FILE=str(config), AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_ENDPOINT_URL=moto,
               AWS_EC2_METADATA_DISABLED="true", HOME=str(tmp_path))
    r = mounts.run("check", "s3://ckpt", "--profile", "ckpt", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"from assumed role {role['Arn']} via profile ckpt, expires" in r.stdout, r.stdout
    assert "s3://ckpt is reachable; first level holds 1 object(s)" in r.stdout, r.stdout

    # A mount on those session credentials: a file written lands, and reads back.
    mp, _ = mounts.mount("s3://ckpt", None, None, "--profile", "ckpt", "--upload-delay", "0", env=env)
    data = os.urandom(1 << 20)
    with open(os.path.join(mp, "w.bin"), "wb") as f:
        f.write(data)
    r = mounts.run("flush", mp, "--timeout", "60", env=env)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(mp, "seed.bin"), "rb") as f:
        assert f.read() == b"seed" * 1000
    mounts.unmount(mp)
    sts = client("sts", moto, ak=key["AccessKeyId"], sk=key["SecretAccessKey"])
    c = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="verify")["Credentials"]
    got = client("s3", moto, ak=c["AccessKeyId"], sk=c["SecretAccessKey"], token=c["SessionToken"]).get_object(Bucket="ckpt", Key="w.bin")
    assert hashlib.sha256(got["Body"].read()).hexdigest() == hashlib.sha256(data).hexdigest()

    # The role's keys with a session token that is not theirs: refused by moto, and ckptfs says so.
    bad = dict(env, AWS_ACCESS_KEY_ID=c["AccessKeyId"], AWS_SECRET_ACCESS_KEY=c["SecretAccessKey"],
               AWS_SESSION_TOKEN=c["SessionToken"][:-4] + "XXXX")
    r = mounts.run("check", "s3://ckpt", env=bad)
    assert r.returncode != 0 and "HeadBucket s3://ckpt failed" in r.stderr, r.stdout + r.stderr
    assert c["SecretAccessKey"] not in r.stderr + r.stdout


def test_versions_names_the_permission_s3_refuses(moto, mounts, tmp_path):
    iam = client("iam", moto)
    # 1-3: a user whose policy allows S3 except listing versions; 4-7: a versioned bucket with two versions.
    iam.create_user(UserName="reader")
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    iam.put_user_policy(UserName="reader", PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "s3:ListBucketVersions", "Resource": "*"}]}))
    s3 = client("s3", moto)
    s3.create_bucket(Bucket="ckpt")
    s3.put_bucket_versioning(Bucket="ckpt", VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket="ckpt", Key="model.pt", Body=b"epoch 1")
    s3.put_object(Bucket="ckpt", Key="model.pt", Body=b"epoch 2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}
    env.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"], AWS_REGION="us-east-1",
               AWS_ENDPOINT_URL=moto, AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true", HOME=str(tmp_path))
    mp, _ = mounts.mount("s3://ckpt", None, None, env=env)
    with open(os.path.join(mp, "model.pt"), "rb") as f:
        assert f.read() == b"epoch 2"
    r = mounts.run("versions", os.path.join(mp, "model.pt"), env=env)
    assert r.returncode != 0, r.stdout
    assert "AccessDenied" in r.stderr and "s3:ListBucketVersions" in r.stderr, r.stderr
    assert key["SecretAccessKey"] not in r.stderr + r.stdout
