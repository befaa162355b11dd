#!/usr/bin/env python3
"""botocore as the oracle for credential resolution.

Runs botocore's default credential chain in this process's environment (the caller sets AWS_CONFIG_FILE,
AWS_SHARED_CREDENTIALS_FILE, AWS_EC2_METADATA_SERVICE_ENDPOINT, AWS_CONTAINER_CREDENTIALS_FULL_URI,
AWS_ENDPOINT_URL_STS... to files and loopback stand-ins) and prints JSON:
    {"access_key", "token", "method", "region", "expiry"}
argv[1], if given and not empty, is an explicit profile (like --profile). The region is botocore's configured
region, or for instance-profile credentials without one, botocore's IMDSRegionProvider (as the AWS CLI v2 does).
"""
import json
import sys

import botocore.session
from botocore.utils import IMDSRegionProvider


def main():
    profile = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None
    session = botocore.session.Session(profile=profile)
    creds = session.get_credentials()
    out = {"region": session.get_config_variable("region")}
    if creds is None:
        out["error"] = "no credentials"
    else:
        frozen = creds.get_frozen_credentials()
        out.update(access_key=frozen.access_key, token=frozen.token, method=creds.method)
        expiry = getattr(creds, "_expiry_time", None)
        out["expiry"] = expiry.strftime("%Y-%m-%dT%H:%M:%SZ") if expiry else None
        if out["region"] is None and creds.method == "iam-role":
            out["region"] = IMDSRegionProvider(session).provide()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
