#!/bin/sh
# Make a private CA, a broker certificate and client certificates for a reconcile-agent fleet (openssl).
#
# usage: make-certs.sh [-d DIR] [-s SUBJECT_ALT_NAMES] [-D DAYS] [CLIENT...]
#   -d DIR   where the files go (default: ./certs); an existing DIR/ca.key is reused, so clients can be
#            added later by running the script again with their names
#   -s SANS  the broker's names, as openssl subjectAltName entries, comma-separated
#            (default: DNS:localhost,IP:127.0.0.1). Agents check that mqtt.host is one of them.
#   -D DAYS  validity of the new certificates (default: 825)
#   CLIENT   one client certificate per name, with that name as its CN: node ids and `orchestrator`.
#            With mosquitto's `use_identity_as_username true` the CN is the MQTT user name the ACL sees.
#
# Writes DIR/ca.crt, ca.key, server.crt, server.key (only when missing) and NAME.crt, NAME.key per client.
# Keys are ECDSA P-256, unencrypted (the agent cannot prompt for a passphrase), mode 0600. Keep ca.key off
# the nodes: each node needs ca.crt and its own NAME.crt and NAME.key only.
set -eu

dir=./certs
sans=DNS:localhost,IP:127.0.0.1
days=825
while getopts d:s:D: opt; do
    case $opt in
    d) dir=$OPTARG ;;
    s) sans=$OPTARG ;;
    D) days=$OPTARG ;;
    *) sed -n '2,16s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))

umask 077
mkdir -p "$dir"
cd "$dir"

key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# sign NAME EXTENSIONS: NAME.csr -> NAME.crt, signed by the CA
sign() {
    printf '%s\n' "$2" >"$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days "$days" -sha256 \
        -extfile "$1.ext" -out "$1.crt" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
    chmod 0644 "$1.crt"
}

if [ ! -f ca.key ]; then
    key ca.key
    openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=reconcile-agent CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out ca.crt
    chmod 0644 ca.crt
fi

if [ ! -f server.key ]; then
    key server.key
    openssl req -new -key server.key -subj "/CN=reconcile-agent broker" -out server.csr
    sign server "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$sans"
fi

for name in "$@"; do
    key "$name.key"
    openssl req -new -key "$name.key" -subj "/CN=$name" -out "$name.csr"
    sign "$name" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth"
done
