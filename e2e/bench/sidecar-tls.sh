# Sourced by the benchmarks that run a real etcd-backup-sidecar process: the sidecar serves the
# operator alone, over mutual TLS (docs/security.md), so a CA, its server certificate and a client
# certificate for the operator's name are made in $WORK/tls with openssl; `scurl` calls it as the
# operator. Needs WORK and SIDECAR (host:port).
TLS=$WORK/tls; mkdir -p "$TLS"
ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ec_key "$TLS/ca.key"
openssl req -x509 -new -key "$TLS/ca.key" -out "$TLS/ca.crt" -days 2 -subj /CN=bench-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null
leaf() { # NAME SAN USAGE
  ec_key "$TLS/$1.key"
  openssl req -new -key "$TLS/$1.key" -subj "/CN=$2" -out "$TLS/$1.csr" 2>/dev/null
  openssl x509 -req -in "$TLS/$1.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" -CAcreateserial -days 2 \
    -out "$TLS/$1.crt" -extfile <(printf 'subjectAltName=DNS:%s\nextendedKeyUsage=%s\n' "$2" "$3") 2>/dev/null
}
leaf tls bench.sidecar serverAuth
leaf operator operator.sidecar.etcd.ouroboros.dev clientAuth
scurl() { curl -sf --cacert "$TLS/ca.crt" --cert "$TLS/operator.crt" --key "$TLS/operator.key" \
  --resolve "$SIDECAR:127.0.0.1" "$@"; }

