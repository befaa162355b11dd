#!/bin/bash
# fsx runs in parallel on one mount, then flush, unmount, remount with an empty cache and compare each file's
# sha256 (through the mount and from S3 with boto3) with fsx's final good buffer (.fsxgood).
# usage: fsx_batch.sh BIN SERVER_JSON OUTDIR "fsx-args-1" "fsx-args-2" ...
# fsx is xfstests' ltp/fsx.c built at /tmp/out-tools/fsx, changed to save its good buffer (.fsxgood) when it
# ends: upstream saves it only when a check fails, and the comparison here then sees an empty file.
set -u
BIN=$1; SJ=$2; OUT=$3; shift 3
rm -rf "$OUT"; mkdir -p "$OUT/mnt" "$OUT/good"
EP=$(python3 -c "import json;print(json.load(open('$SJ'))['endpoint'])")
AK=$(python3 -c "import json;print(json.load(open('$SJ'))['access_key'])")
SK=$(python3 -c "import json;print(json.load(open('$SJ'))['secret_key'])")
export AWS_ENDPOINT_URL=$EP AWS_ACCESS_KEY_ID=$AK AWS_SECRET_ACCESS_KEY=$SK AWS_REGION=us-east-1 AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent
PFX=fsx-$(date +%s)
$BIN mount s3://ckpt/$PFX "$OUT/mnt" --cache-dir "$OUT/cache" ${MOUNT_EXTRA:-} || exit 2
i=0; pids=()
for args in "$@"; do
  i=$((i+1))
  ( start=$(date +%s); /tmp/out-tools/fsx -q $args -P "$OUT/good" "$OUT/mnt/f$i" > "$OUT/fsx$i.out" 2>&1; rc=$?;
    echo "fsx $i [$args] rc=$rc $(( $(date +%s)-start ))s" >> "$OUT/summary" ) &
  pids+=($!)
done
wait "${pids[@]}"
cat "$OUT/summary"
$BIN flush "$OUT/mnt" --timeout 300 || echo "FLUSH FAILED"
$BIN unmount "$OUT/mnt" || echo "UNMOUNT FAILED"
$BIN mount s3://ckpt/$PFX "$OUT/mnt" --cache-dir "$OUT/cache2" || exit 2
for j in $(seq 1 $i); do
  g=$(sha256sum < "$OUT/good/f$j.fsxgood" | cut -c1-64)
  m=$(sha256sum < "$OUT/mnt/f$j" | cut -c1-64)
  s=$(python3 - "$PFX/f$j" <<'EOF'
import boto3, hashlib, os, sys
from botocore.config import Config
s3 = boto3.client("s3", config=Config(s3={"addressing_style": "path"}))
print(hashlib.sha256(s3.get_object(Bucket="ckpt", Key=sys.argv[1])["Body"].read()).hexdigest())
EOF
)
  if [ "$g" = "$m" ] && [ "$g" = "$s" ]; then echo "f$j OK $(stat -c %s "$OUT/good/f$j.fsxgood") bytes"; else echo "f$j MISMATCH good=$g mount=$m s3=$s"; fi
done
$BIN unmount "$OUT/mnt"
