#!/usr/bin/env bash
# Regenerates proto/adminv1 from proto/admin.proto. Needs protoc (Debian package
# protobuf-compiler) and the Go plugins at the versions below.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler" >&2; exit 1; }
bin=$(go env GOPATH)/bin
[ -x "$bin/protoc-gen-go" ] || go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
[ -x "$bin/protoc-gen-go-grpc" ] || go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
PATH="$bin:$PATH" protoc -I proto \
  --go_out=proto/adminv1 --go_opt=paths=source_relative \
  --go-grpc_out=proto/adminv1 --go-grpc_opt=paths=source_relative \
  proto/admin.proto
echo "generated proto/adminv1"
