#!/usr/bin/env bash
# Regenerates proto/adminv1 and proto/clusterv1 from proto/*.proto. Needs protoc (Debian package
# protobuf-compiler) and the Go plugins at the versions below.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler" >&2; exit 1; }
bin=$(go env GOPATH)/bin
[ -x "$bin/protoc-gen-go" ] || go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
[ -x "$bin/protoc-gen-go-grpc" ] || go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
for svc in admin cluster; do
  PATH="$bin:$PATH" protoc -I proto \
    --go_out=proto/${svc}v1 --go_opt=paths=source_relative \
    --go-grpc_out=proto/${svc}v1 --go-grpc_opt=paths=source_relative \
    proto/$svc.proto
  echo "generated proto/${svc}v1"
done
