#!/bin/sh
# One S3 identity, from the environment (the same pair the apps get as AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY), then `weed server` with its S3 gateway on 8333 and its data in /data.
# Lance and Iceberg ports off: nothing here uses them, and Lance's default (9101) is the workers'
# metrics port.
set -eu
: "${S3_ACCESS_KEY:?S3_ACCESS_KEY must be set}"
: "${S3_SECRET_KEY:?S3_SECRET_KEY must be set}"
umask 077
cat > /tmp/s3.json <<JSON
{"identities": [{"name": "imagequeue",
  "credentials": [{"accessKey": "$S3_ACCESS_KEY", "secretKey": "$S3_SECRET_KEY"}],
  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
JSON
mkdir -p /data
exec weed server -dir=/data -master.volumeSizeLimitMB=1024 -volume.max=0 \
  -filer -s3 -s3.port=8333 -s3.port.lance=0 -s3.port.iceberg=0 -s3.config=/tmp/s3.json "$@"
