#!/usr/bin/env python3
"""moto_server with one fix to its IAM signature check, for tests that need a server checking SigV4 with
session tokens (start it with INITIAL_NO_AUTH_ACTION_COUNT=N: after N requests every request must be signed by
an IAM user's keys or by the session credentials STS gave, token included).

moto 5.2.1 rebuilds the request for botocore's signer from the URL its web framework decoded (`delimiter=/`), and
botocore takes a URL's query into the canonical request as it is, while a client signs the value encoded
(`delimiter=%2F`, SigV4's canonical query). So any request with a reserved character in a query value is refused:
boto3's own `list_objects_v2(Delimiter="/")` gets SignatureDoesNotMatch there. This encodes each query key and value
the SigV4 way before moto recomputes the signature. Arguments are moto_server's.
"""
import sys
from urllib.parse import quote, unquote, urlsplit

from moto.iam import access_control

_create = access_control.IAMRequestBase._create_aws_request


def _create_decoded(self):
    parts = urlsplit(self._path)
    if parts.query:
        pairs = []
        for pair in parts.query.split("&"):
            key, eq, value = pair.partition("=")
            pairs.append(quote(unquote(key), safe="-_.~") + eq + quote(unquote(value), safe="-_.~"))
        self._path = parts.path + "?" + "&".join(pairs)
    return _create(self)


access_control.IAMRequestBase._create_aws_request = _create_decoded

if __name__ == "__main__":
    from moto.server import main
    sys.exit(main())
