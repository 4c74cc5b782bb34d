#!/bin/sh
# Dev certificates for NATS TLS (docs/operations.md): a throwaway CA and one server certificate for
# nats, nats-2, nats-3 and localhost, used by clients (server auth) and by cluster routes (mutual TLS).
#   compose/nats/gen-certs.sh [OUT_DIR]      # default: compose/nats/tls
# Writes ca.crt, server.crt, server.key. The CA's key is deleted once it has signed: to rotate, run
# again and restart NATS and every proxy and worker. Production: use certificates from your own CA.
set -eu
out=${1:-$(dirname "$0")/tls}
days=${NATS_CERT_DAYS:-825}
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" -subj "/CN=switchyard-nats-dev-ca" \
  -keyout "$work/ca.key" -out "$work/ca.crt" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -sha256 -subj "/CN=nats" \
  -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
cat > "$work/ext.cnf" <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=DNS:nats,DNS:nats-2,DNS:nats-3,DNS:localhost,IP:127.0.0.1
EXT
openssl x509 -req -sha256 -days "$days" -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
  -CAcreateserial -extfile "$work/ext.cnf" -out "$work/server.crt" 2>/dev/null
# The key is read by nats-server in its container (root); the certificates are public.
cp "$work/server.key" "$out/server.key"
umask 022
cp "$work/ca.crt" "$work/server.crt" "$out/"
chmod 644 "$out/ca.crt" "$out/server.crt"
echo "wrote $out/ca.crt $out/server.crt $out/server.key"
