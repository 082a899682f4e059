#!/usr/bin/env bash
# Regenerates the committed test PKI. Run by hand only (never at test time):
#   cd crates/sessile-testkit/testdata && bash generate.sh
# Everything is EC P-256 with PKCS#8 keys, valid for 10 years.
set -euo pipefail
DAYS=3650
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

ec_key ca.key.pem
openssl req -x509 -new -key ca.key.pem -sha256 -days "$DAYS" -subj "/CN=Sessile Test CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash" \
  -out ca.pem

leaf() { # name CN SAN
  local name=$1 cn=$2 san=$3
  ec_key "$name.key.pem"
  openssl req -new -key "$name.key.pem" -subj "/CN=$cn" -out "$name.csr"
  cat > "$name.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=$san
authorityKeyIdentifier=keyid
subjectKeyIdentifier=hash
EXT
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key.pem -CAcreateserial \
    -days "$DAYS" -sha256 -extfile "$name.ext" -out "$name.pem"
  rm -f "$name.csr" "$name.ext"
}

leaf example-com example.com "DNS:example.com,DNS:*.example.com"
leaf other-test other.test "DNS:other.test"
leaf localhost localhost "DNS:localhost,IP:127.0.0.1"
rm -f ca.srl
