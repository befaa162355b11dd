#!/usr/bin/env python3
"""botocore as an oracle for S3 request signing.

Reads a JSON list of {"op": boto3 method name, "params": {...}} on stdin, lets a real boto3 S3 client
build and sign each request, captures it just before it would be sent (nothing leaves the process), and
prints a JSON list of {"method", "url", "headers", "body_hex"}. Config comes from argv:
    botocore_oracle.py ENDPOINT_URL REGION ADDRESSING_STYLE ACCESS_KEY SECRET_KEY [SESSION_TOKEN]
"""
import json
import sys

import boto3
from botocore.config import Config


class Captured(Exception):
    pass


def main():
    endpoint, region, style, ak, sk = sys.argv[1:6]
    token = sys.argv[6] if len(sys.argv) > 6 else None
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=ak, aws_secret_access_key=sk,
        aws_session_token=token,
        config=Config(s3={"addressing_style": style}, retries={"max_attempts": 1},
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"))
    out = []

    def capture(request, **kwargs):
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        elif hasattr(body, "read"):
            body = body.read()
        out.append({"method": request.method, "url": request.url,
                    "headers": [[k, v.decode() if isinstance(v, bytes) else v] for k, v in request.headers.items()],
                    "body_hex": bytes(body).hex()})
        raise Captured()

    client.meta.events.register("before-send.s3", capture)
    for item in json.load(sys.stdin):
        params = dict(item["params"])
        if "Body" in params:
            params["Body"] = params["Body"].encode()
        try:
            getattr(client, item["op"])(**params)
        except Captured:
            pass
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
