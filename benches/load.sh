#!/usr/bin/env bash
# Load benchmark: what scimgate enforcing its full policy costs, next to nginx and HAProxy doing
# plain TLS proxying, in front of one fast static SCIM backend, on the same machine in one run.
#
#   benches/load.sh                     # 3 rounds, DURATION=5 WARMUP=2 (about 7 minutes)
#   ROUNDS=1 DURATION=5 benches/load.sh # one round (about 2.5 minutes), noisier
#
# Everything listens on loopback only. Each server gets its own generated configuration
# (templates in benches/load/) in a temporary directory; every process started here is stopped
# by its pid on exit, Ctrl-C and failure included.
#
# Targets: the backend itself over plain HTTP (the ceiling), nginx and HAProxy terminating TLS
# and proxying, scimgate terminating TLS and enforcing token, tenant, scope and email-domain
# policy on requests and responses (rate limits set high enough never to trigger).
# Scenarios: GET /Users/{id}, GET /Users?filter=..., POST /Users, PATCH /Users/{id}, each
# measured with `wrk -t1 -c$CONNECTIONS -d$DURATION` after a $WARMUP-second warm-up.
# Every row is measured ROUNDS times, the rounds interleaving all targets, and the median is
# reported with the range: on a shared machine the speed drifts between rows, and
# interleaving makes the drift hit every target alike instead of whichever ran last.
#
# The report (markdown) is printed and written to benches/results/load-<timestamp>.md and
# benches/results/latest.md.
#
# Environment: ROUNDS (default 3), DURATION (s, default 5), WARMUP (s, default 2), CONNECTIONS (default 32),
# PROXY_WORKERS (nginx workers / HAProxy threads, default: nproc), BACKEND_WORKERS (default 1),
# ACCESS_LOGS (on|off, default on: every proxy writes one access-log line per request to a file,
# as scimgate always does; off: none does), CONDITIONAL_WRITES (on|off, default on: scimgate's
# upstream.conditional_writes, which the static backend honours), KEEP_TMP=1 (keep the
# temporary directory),
# TARGETS and SCENARIOS (space-separated subsets, e.g. TARGETS="nginx scimgate" SCENARIOS=get),
# PGO=1 (measure target/pgo/release/scimgate, the profile-guided build of scripts/build-pgo,
# built first when missing or older than the sources; the report goes to latest-pgo.md),
# SCIMGATE_BIN (measure this scimgate binary as it is; scripts/build-pgo trains with it) and
# RESULTS_DIR (where the reports go, default benches/results).
#
# INSTRUCTIONS=1 runs bare and scimgate under valgrind's callgrind instead and reports the
# instructions each executes per request (counted only while wrk measures): unlike time, the
# count does not drift with whatever else the machine runs, so two commits compare exactly.
# Defaults in that mode: TARGETS="bare scimgate", CONNECTIONS=4, ROUNDS=1. valgrind emulates a
# CPU without SHA extensions, so SHA-256 (token hash, audit chain) counts in its portable form.

set -euo pipefail
shopt -u patsub_replacement 2>/dev/null || true # '&' in a ${x//a/b} replacement stays literal

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOAD_DIR=$ROOT/benches/load
RESULTS_DIR=${RESULTS_DIR:-$ROOT/benches/results}
BIN=$ROOT/target/release/scimgate
BARE_BIN=$ROOT/target/release/examples/bare_proxy
PGO=${PGO:-0}
[[ $PGO == 0 || $PGO == 1 ]] || { printf '[load] error: PGO must be 0 or 1\n' >&2; exit 1; }
[[ $PGO == 1 ]] && BIN=$ROOT/target/pgo/release/scimgate
[[ -n ${SCIMGATE_BIN:-} ]] && BIN=$SCIMGATE_BIN

INSTRUCTIONS=${INSTRUCTIONS:-0}
if [[ $INSTRUCTIONS == 1 ]]; then
    ROUNDS=${ROUNDS:-1}
    CONNECTIONS=${CONNECTIONS:-4}
    TARGETS=${TARGETS:-bare scimgate}
fi
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
PROXY_WORKERS=${PROXY_WORKERS:-$(nproc)}
BACKEND_WORKERS=${BACKEND_WORKERS:-1}
ACCESS_LOGS=${ACCESS_LOGS:-on}
CONDITIONAL_WRITES=${CONDITIONAL_WRITES:-on}
KEEP_TMP=${KEEP_TMP:-0}

read -r -a TARGETS <<<"${TARGETS:-backend nginx haproxy bare scimgate}"
read -r -a SCENARIOS <<<"${SCENARIOS:-get list post patch}"
USER_ID=2819c223-7f76-453a-919d-413861904646
FILTER_QUERY='filter=userName%20eq%20%22ada%40acme.com%22'

log() { printf '[load] %s\n' "$*" >&2; }
die() {
    printf '[load] error: %s\n' "$*" >&2
    exit 1
}

for v in DURATION WARMUP CONNECTIONS PROXY_WORKERS BACKEND_WORKERS; do
    [[ ${!v} =~ ^[0-9]+$ && ${!v} -gt 0 ]] || die "$v must be a positive integer (got '${!v}')"
done
[[ $ACCESS_LOGS == on || $ACCESS_LOGS == off ]] || die "ACCESS_LOGS must be on or off"
[[ $INSTRUCTIONS == 0 || $INSTRUCTIONS == 1 ]] || die "INSTRUCTIONS must be 0 or 1"
if [[ $INSTRUCTIONS == 1 ]]; then
    for t in "${TARGETS[@]}"; do
        [[ $t == bare || $t == scimgate ]] || die "INSTRUCTIONS=1 counts bare and scimgate only (TARGETS has $t)"
    done
fi

# ---------------------------------------------------------------------------------------------
# Tools and the binary

ensure_tools() {
    local missing=() cmd
    for cmd in nginx haproxy wrk; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    [[ $INSTRUCTIONS == 1 ]] && ! command -v callgrind_control >/dev/null 2>&1 && missing+=(valgrind)
    if ((${#missing[@]})); then
        [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]}; install them (apt-get install ${missing[*]}) or run as root"
        log "installing ${missing[*]} with apt-get"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
    for cmd in nginx haproxy wrk openssl curl; do
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd is not installed"
    done
}

ensure_binary() {
    local stale="" sources=("$ROOT/src" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock")
    if [[ -n ${SCIMGATE_BIN:-} ]]; then
        [[ -x $BIN ]] || die "SCIMGATE_BIN=$BIN is not an executable"
    elif [[ $PGO == 1 ]]; then
        if [[ ! -x $BIN || -n $(find "${sources[@]}" -newer "$BIN" -print -quit) ]]; then
            log "building the profile-guided scimgate (scripts/build-pgo)"
            "$ROOT/scripts/build-pgo" >&2 || die "scripts/build-pgo failed"
        fi
    elif [[ ! -x $BIN || -n $(find "${sources[@]}" -newer "$BIN" -print -quit) ]]; then
        stale=yes
    fi
    # The bare_proxy floor (started whatever TARGETS says) is always the plain release build.
    [[ -x $BARE_BIN && -z $(find "$ROOT/benches/load/bare_proxy.rs" "${sources[@]}" -newer "$BARE_BIN" -print -quit) ]] || stale=yes
    if [[ -n $stale ]]; then
        log "building target/release/scimgate and the bare_proxy floor (cargo build --release)"
        (cd "$ROOT" && cargo build --release --quiet --bin scimgate --example bare_proxy) ||
            die "cargo build --release failed"
    fi
}

ensure_tools
ensure_binary

# ---------------------------------------------------------------------------------------------
# Processes, cleanup

TMP=$(mktemp -d "${TMPDIR:-/tmp}/scimgate-load.XXXXXX")
chmod 755 "$TMP" # nginx workers run as an unprivileged user and need their temp paths
PIDS=()
PID_NAMES=()
declare -A PID_OF=()

cleanup() {
    local rc=$? i pid n
    trap - EXIT INT TERM
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill -0 "$pid" 2>/dev/null || continue
        kill -TERM "$pid" 2>/dev/null || true
        for ((n = 0; n < 50; n++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "${PID_NAMES[i]} (pid $pid) ignored SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP_TMP == 1 ]]; then
        log "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME OUTFILE ERRFILE COMMAND...: runs COMMAND in the background, records its pid.
start() {
    local name=$1 outfile=$2 errfile=$3
    shift 3
    "$@" >"$outfile" 2>"$errfile" &
    PIDS+=("$!")
    PID_NAMES+=("$name")
    PID_OF[$name]=$!
}

alive_or_die() {
    local name=$1 logfile=$2
    if ! kill -0 "${PID_OF[$name]}" 2>/dev/null; then
        tail -n 20 "$logfile" >&2 || true
        die "$name exited during start-up (log above: $logfile)"
    fi
}

# wait_status NAME LOGFILE URL STATUS: polls URL (bounded, 20 s) until it answers STATUS.
wait_status() {
    local name=$1 logfile=$2 url=$3 want=$4 got="" n
    for ((n = 0; n < 200; n++)); do
        alive_or_die "$name" "$logfile"
        got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 --cacert "$TLS_DIR/cert.pem" \
            "$url" || true)
        [[ $got == "$want" ]] && return 0
        sleep 0.1
    done
    tail -n 20 "$logfile" >&2 || true
    die "$name not ready after 20 s: $url answered '$got', expected $want"
}

USED_PORTS=" "
# free_port VAR: sets VAR to a loopback port nothing uses, below the ephemeral range (so no
# outgoing connection holds it), and different from the ones picked before.
free_port() {
    local var=$1 p n low
    read -r low _ </proc/sys/net/ipv4/ip_local_port_range || low=32768
    ((low > 11000)) || low=32768
    for ((n = 0; n < 200; n++)); do
        p=$((10000 + RANDOM % (low - 10000)))
        [[ $USED_PORTS == *" $p "* ]] && continue
        if command -v ss >/dev/null 2>&1; then
            [[ -z $(ss -Htan "( sport = :$p )" 2>/dev/null) ]] || continue
        elif (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            continue
        fi
        USED_PORTS+="$p "
        printf -v "$var" '%s' "$p"
        return 0
    done
    die "no free loopback port found"
}

# render TEMPLATE OUT NAME=VALUE...: replaces every @NAME@ in TEMPLATE.
render() {
    local tmpl=$1 out=$2 text kv
    shift 2
    text=$(<"$tmpl")
    for kv in "$@"; do
        text=${text//@${kv%%=*}@/${kv#*=}}
    done
    [[ ! $text =~ @[A-Z_]+@ ]] || die "unfilled placeholder in $tmpl: $(grep -o '@[A-Z_]*@' <<<"$text" | head -n1)"
    printf '%s\n' "$text" >"$out"
}

# A JSON text as an nginx single-quoted string body ('$' through the $dollar variable).
nginx_quote() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\'/\\\'}
    s=${s//\$/\$\{dollar\}}
    printf '%s' "$s"
}

# CPU time (clock ticks) used so far by a process and its direct children (nginx workers).
cpu_ticks() {
    local pid=$1 total=0 p stat rest child
    local -a f
    for p in "$pid" $(pgrep -P "$pid" || true); do
        stat=$(<"/proc/$p/stat") 2>/dev/null || continue
        rest=${stat##*) }
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
        # children that have exited and been waited for are in cutime/cstime
        child=$((f[13] + f[14]))
        total=$((total + child))
    done
    echo "$total"
}

# Busy CPU time (clock ticks) of the whole machine: everything but idle and iowait.
cpu_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }

# CPU time (clock ticks) of this script's finished children (wrk, curl, ...).
own_children_ticks() {
    local stat rest
    local -a f
    stat=$(<"/proc/$$/stat")
    rest=${stat##*) }
    read -r -a f <<<"$rest"
    echo $((f[13] + f[14]))
}

# Resident memory (kB) of a process and its direct children.
rss_kb() {
    local pid=$1 total=0 p v
    for p in "$pid" $(pgrep -P "$pid" || true); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# ---------------------------------------------------------------------------------------------
# Configuration

free_port BACKEND_PORT
free_port NGINX_PORT
free_port HAPROXY_PORT
free_port SCIMGATE_PORT
free_port BARE_PORT
free_port ADMIN_PORT
BACKEND_URL=http://127.0.0.1:$BACKEND_PORT/acme/v2

TLS_DIR=$TMP/tls
# Logs go to a directory of their own, as in production: scimgate watches its configuration
# directory for reloads, and a log growing there would wake the watcher on every write.
mkdir -p "$TLS_DIR" "$TMP/backend/tmp" "$TMP/nginx/tmp" "$TMP/haproxy" "$TMP/scimgate" "$TMP/bare" "$TMP/logs" "$TMP/wrk"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
    -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem" >/dev/null 2>&1 ||
    die "openssl could not make the self-signed certificate"
cat "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" >"$TLS_DIR/haproxy.pem"

user_json=$(<"$LOAD_DIR/user.json")
user_json=${user_json//@BACKEND@/$BACKEND_URL}
# The user's version (meta.version, the ETag) is the one nginx computes for the file it serves
# the user from, "<mtime>-<size>" in hex, so that nginx's own If-Match check holds it to it.
# The version is part of the file: a placeholder of its final length is sized first.
user_mtime=1700000000
for n in 3 4 5; do
    probe=${user_json//@VERSION@/$(printf '%x-%0*d' "$user_mtime" "$n" 0)}
    size_hex=$(printf '%x' "$(printf '%s' "$probe" | wc -c)")
    ((${#size_hex} == n)) && break
done
user_etag=$(printf '"%x-%s"' "$user_mtime" "$size_hex")
user_json=${user_json//@VERSION@/${user_etag//\"/}}
mkdir -p "$TMP/backend/www"
printf '%s' "$user_json" >"$TMP/backend/www/user.json"
touch -d "@$user_mtime" "$TMP/backend/www/user.json"
list_json=$(<"$LOAD_DIR/list.json")
list_json=${list_json//@USER@/$user_json}

render "$LOAD_DIR/backend.nginx.conf" "$TMP/backend/nginx.conf" \
    "DIR=$TMP/backend" "BACKEND_WORKERS=$BACKEND_WORKERS" "BACKEND_PORT=$BACKEND_PORT" \
    "BACKEND_URL=$BACKEND_URL" "USER=$(nginx_quote "$user_json")" "LIST=$(nginx_quote "$list_json")" \
    "USER_ETAG=$user_etag"

if [[ $ACCESS_LOGS == on ]]; then
    nginx_log="access_log $TMP/nginx/access.log;"
    haproxy_log_global="log stderr format raw local0 info"
    haproxy_log_defaults="log global
    option httplog"
    scimgate_rust_log=info
    scimgate_audit="" # the default sink: stdout, here $TMP/logs/scimgate-audit.log
else
    nginx_log="access_log off;"
    haproxy_log_global=""
    haproxy_log_defaults=""
    scimgate_rust_log=info,scimgate::access=off
    scimgate_audit="audit: { sink: none }"
fi
render "$LOAD_DIR/proxy.nginx.conf" "$TMP/nginx/nginx.conf" \
    "DIR=$TMP/nginx" "PROXY_WORKERS=$PROXY_WORKERS" "BACKEND_PORT=$BACKEND_PORT" \
    "NGINX_PORT=$NGINX_PORT" "TLS_DIR=$TLS_DIR" "NGINX_ACCESS_LOG=$nginx_log"
render "$LOAD_DIR/haproxy.cfg" "$TMP/haproxy/haproxy.cfg" \
    "PROXY_WORKERS=$PROXY_WORKERS" "BACKEND_PORT=$BACKEND_PORT" "HAPROXY_PORT=$HAPROXY_PORT" \
    "TLS_DIR=$TLS_DIR" "HAPROXY_LOG_GLOBAL=$haproxy_log_global" \
    "HAPROXY_LOG_DEFAULTS=$haproxy_log_defaults"
render "$LOAD_DIR/scimgate.yaml" "$TMP/scimgate/gateway.yaml" \
    "SCIMGATE_PORT=$SCIMGATE_PORT" "ADMIN_PORT=$ADMIN_PORT" "TLS_DIR=$TLS_DIR" \
    "BACKEND_URL=$BACKEND_URL" "SCIMGATE_AUDIT=$scimgate_audit" \
    "CONDITIONAL_WRITES=$([[ $CONDITIONAL_WRITES == on ]] && echo true || echo false)"

# The token: secret alone on stdout line 1; the token file gets only its hash.
issue_out=$("$BIN" token issue --config "$TMP/scimgate/gateway.yaml" --tenant acme --id bench \
    --scope users:read --scope users:write --domain acme.com --expires-in 1d \
    2>"$TMP/scimgate/issue.err") || {
    cat "$TMP/scimgate/issue.err" >&2
    die "scimgate token issue failed"
}
BENCH_TOKEN=${issue_out%%$'\n'*}
[[ $BENCH_TOKEN == scimgate_* ]] || die "scimgate token issue printed no token"
export BENCH_TOKEN BENCH_LUA_DIR=$LOAD_DIR
export SCIMGATE_BENCH_UPSTREAM_TOKEN=backend-credential-not-checked-by-the-static-backend

# ---------------------------------------------------------------------------------------------
# Start everything

log "checking configurations"
nginx -q -t -p "$TMP/backend/" -c "$TMP/backend/nginx.conf" -e "$TMP/backend/error.log" ||
    die "backend nginx configuration refused"
nginx -q -t -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" ||
    die "proxy nginx configuration refused"
haproxy -q -c -f "$TMP/haproxy/haproxy.cfg" || die "HAProxy configuration refused"
"$BIN" check --config "$TMP/scimgate/gateway.yaml" >/dev/null || die "scimgate check refused its configuration"

log "starting backend :$BACKEND_PORT, nginx :$NGINX_PORT, haproxy :$HAPROXY_PORT, bare_proxy :$BARE_PORT, scimgate :$SCIMGATE_PORT (admin :$ADMIN_PORT)"
start backend "$TMP/backend/stderr.log" "$TMP/backend/stderr.log" \
    nginx -p "$TMP/backend/" -c "$TMP/backend/nginx.conf" -e "$TMP/backend/error.log" -g 'daemon off;'
start nginx "$TMP/nginx/stderr.log" "$TMP/nginx/stderr.log" \
    nginx -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -e "$TMP/nginx/error.log" -g 'daemon off;'
start haproxy "$TMP/haproxy/haproxy.log" "$TMP/haproxy/haproxy.log" haproxy -db -f "$TMP/haproxy/haproxy.cfg"
# INSTRUCTIONS=1: bare and scimgate run under callgrind, which counts instructions.
WRAP=()
if [[ $INSTRUCTIONS == 1 ]]; then
    mkdir -p "$TMP/callgrind"
    WRAP=(valgrind --tool=callgrind --quiet --callgrind-out-file="$TMP/callgrind/%q{CG_NAME}.out")
fi
start bare "$TMP/bare/stdout.log" "$TMP/bare/stderr.log" \
    env CG_NAME=bare "${WRAP[@]}" "$BARE_BIN" "127.0.0.1:$BARE_PORT" "$TLS_DIR/cert.pem" "$TLS_DIR/key.pem" \
    "http://127.0.0.1:$BACKEND_PORT" /acme/scim/v2 /acme/v2
start scimgate "$TMP/logs/scimgate-audit.log" "$TMP/logs/scimgate.log" \
    env CG_NAME=scimgate RUST_LOG="$scimgate_rust_log" "${WRAP[@]}" "$BIN" serve --config "$TMP/scimgate/gateway.yaml"

wait_status backend "$TMP/backend/error.log" "$BACKEND_URL/Users/$USER_ID" 200
wait_status nginx "$TMP/nginx/error.log" "https://localhost:$NGINX_PORT/nothing" 404
wait_status haproxy "$TMP/haproxy/haproxy.log" "https://localhost:$HAPROXY_PORT/nothing" 404
wait_status bare "$TMP/bare/stderr.log" "https://localhost:$BARE_PORT/nothing" 404
wait_status scimgate "$TMP/logs/scimgate.log" "http://127.0.0.1:$ADMIN_PORT/readyz" 200
RSS_SCIMGATE_IDLE=$(rss_kb "${PID_OF[scimgate]}")

# ---------------------------------------------------------------------------------------------
# One request per target and scenario, with the expected status

base_url() {
    case $1 in
        backend) echo "$BACKEND_URL" ;;
        nginx) echo "https://localhost:$NGINX_PORT/acme/scim/v2" ;;
        haproxy) echo "https://localhost:$HAPROXY_PORT/acme/scim/v2" ;;
        bare) echo "https://localhost:$BARE_PORT/acme/scim/v2" ;;
        scimgate) echo "https://localhost:$SCIMGATE_PORT/acme/scim/v2" ;;
    esac
}
scenario_path() {
    case $1 in
        get | patch) echo "/Users/$USER_ID" ;;
        list) echo "/Users?$FILTER_QUERY" ;;
        post) echo "/Users" ;;
    esac
}
scenario_label() {
    case $1 in
        get) echo "GET /Users/{id}" ;;
        list) echo "GET /Users?filter" ;;
        post) echo "POST /Users" ;;
        patch) echo "PATCH /Users/{id}" ;;
    esac
}

# request TARGET SCENARIO [AUTHORIZATION] [BODYFILE]: prints the status; body in $TMP/resp.json.
request() {
    local target=$1 scenario=$2 auth=${3-Bearer $BENCH_TOKEN} body=${4-} method=GET
    local -a args=(-s -o "$TMP/resp.json" -w '%{http_code}' --max-time 10 --cacert "$TLS_DIR/cert.pem"
        -H 'Accept: application/scim+json')
    [[ -n $auth ]] && args+=(-H "Authorization: $auth")
    case $scenario in
        post) method=POST body=${body:-$LOAD_DIR/create-user.json} ;;
        patch) method=PATCH body=${body:-$LOAD_DIR/patch-user.json} ;;
    esac
    [[ -n $body ]] && args+=(-H 'Content-Type: application/scim+json' --data-binary "@$body")
    curl "${args[@]}" -X "$method" "$(base_url "$target")$(scenario_path "$scenario")" || echo "000"
}

expected_status() { [[ $1 == post ]] && echo 201 || echo 200; }

log "checking every scenario through every target"
for target in "${TARGETS[@]}"; do
    for scenario in "${SCENARIOS[@]}"; do
        want=$(expected_status "$scenario")
        got=$(request "$target" "$scenario")
        if [[ $got != "$want" ]]; then
            head -c 600 "$TMP/resp.json" >&2 || true
            echo >&2
            [[ $target == scimgate ]] && tail -n 5 "$TMP/logs/scimgate.log" >&2
            die "$target answered $got to $(scenario_label "$scenario"), expected $want"
        fi
        grep -q '"ada@acme.com"' "$TMP/resp.json" ||
            die "$target: $(scenario_label "$scenario") returned no user ada@acme.com"
        if [[ $target == scimgate ]]; then
            # Backend URLs must have been rewritten to the gateway's public prefix.
            grep -q "$BACKEND_URL" "$TMP/resp.json" &&
                die "scimgate: $(scenario_label "$scenario") leaked the backend URL"
            grep -q "/acme/scim/v2/Users/$USER_ID" "$TMP/resp.json" ||
                die "scimgate: $(scenario_label "$scenario") has no rewritten meta.location"
        fi
    done
done

# The policy is really on: no token, and a user outside the token's domains, are refused.
got=$(request scimgate get "")
[[ $got == 401 ]] || die "scimgate answered $got without a token, expected 401"
sed 's/ada@acme\.com/ada@evil.com/g; s/ada\.lovelace@acme\.com/ada@evil.com/g' \
    "$LOAD_DIR/create-user.json" >"$TMP/evil-user.json"
got=$(request scimgate post "Bearer $BENCH_TOKEN" "$TMP/evil-user.json")
[[ $got == 403 ]] || die "scimgate answered $got to a POST of a user in evil.com, expected 403"
log "all targets answer as expected; scimgate refuses a missing token (401) and a foreign domain (403)"

# ---------------------------------------------------------------------------------------------
# Measure

ciphers=""
for target in nginx haproxy bare scimgate; do
    port_var=${target^^}_PORT
    c=$(openssl s_client -brief -connect "127.0.0.1:${!port_var}" -servername localhost \
        </dev/null 2>&1 | awk -F': ' '/^Protocol version/ {p=$2} /^Ciphersuite/ {c=$2} END {print p " " c}') || true
    ciphers+="$target: ${c:-unknown}; "
done

LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
CLK_TCK=$(getconf CLK_TCK)
declare -A RPS P50 P99 ERRS SOCKERR CPU_US OTHER RPS_RANGE
# Per round, keyed target/scenario#round.
declare -A R_RPS R_P50 R_P99 R_CPU R_OTHER R_INSTR INSTR_REQ
# callgrind_zero PID: forget what callgrind counted so far.
callgrind_zero() { callgrind_control -z "$1" >/dev/null || die "callgrind_control -z $1 failed"; }
# callgrind_dump PID NAME: dumps the count since the last zero and prints its instruction total.
callgrind_dump() {
    local before n f
    before=$(find "$TMP/callgrind" -name "$2.out.*" | wc -l)
    callgrind_control -d "$1" >/dev/null || die "callgrind_control -d $1 failed"
    for ((n = 0; n < 100; n++)); do
        (($(find "$TMP/callgrind" -name "$2.out.*" | wc -l) > before)) && break
        sleep 0.1
    done
    f=$(find "$TMP/callgrind" -name "$2.out.*" -printf '%T@ %p\n' | sort -n | tail -n1 | cut -d' ' -f2-)
    [[ -n $f ]] || die "callgrind wrote no dump for $2"
    awk '/^(summary|totals):/ {print $2; exit}' "$f"
}
NOISY=0
FAILED_ROWS=0
RAW=""
total=$((${#TARGETS[@]} * ${#SCENARIOS[@]} * ROUNDS))
i=0
for ((round = 1; round <= ROUNDS; round++)); do
for scenario in "${SCENARIOS[@]}"; do
    for target in "${TARGETS[@]}"; do
        i=$((i + 1))
        url="$(base_url "$target")$(scenario_path "$scenario")"
        k="$target/$scenario"
        kr="$k#$round"
        log "[$i/$total] round $round: $target $(scenario_label "$scenario"): ${WARMUP}s warm-up, ${DURATION}s measured"
        wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" --timeout 5s -s "$LOAD_DIR/$scenario.lua" "$url" \
            >"$TMP/wrk/warmup.txt" 2>&1 || die "wrk warm-up failed: $(cat "$TMP/wrk/warmup.txt")"
        pid=${PID_OF[$target]}
        cpu0=$(cpu_ticks "$pid")
        backend0=$(cpu_ticks "${PID_OF[backend]}")
        own0=$(own_children_ticks)
        busy0=$(cpu_busy)
        out=$TMP/wrk/$target-$scenario-$round.txt
        [[ $INSTRUCTIONS == 1 ]] && callgrind_zero "$pid"
        wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 5s -s "$LOAD_DIR/$scenario.lua" "$url" \
            >"$out" 2>&1 || die "wrk failed: $(cat "$out")"
        instr_total=0
        [[ $INSTRUCTIONS == 1 ]] && instr_total=$(callgrind_dump "$pid" "$target")
        busy1=$(cpu_busy)
        own1=$(own_children_ticks)
        backend1=$(cpu_ticks "${PID_OF[backend]}")
        cpu1=$(cpu_ticks "$pid")
        # CPU used by anything else than wrk, the target and the backend during the row (other
        # processes on the machine, and kernel work not charged to a process), in % of a core.
        other=$((busy1 - busy0 - (own1 - own0) - (cpu1 - cpu0)))
        [[ $target != backend ]] && other=$((other - (backend1 - backend0)))
        ((other < 0)) && other=0
        R_OTHER[$kr]=$(awk -v t="$other" -v hz="$CLK_TCK" -v d="$DURATION" 'BEGIN {printf "%.0f", t / hz / d * 100}')
        ((R_OTHER[$kr] > 25)) && NOISY=$((NOISY + 1))
        line=$(grep '^RESULT ' "$out") || die "wrk printed no RESULT line: $(cat "$out")"
        declare -A r=()
        for kv in ${line#RESULT }; do r[${kv%%=*}]=${kv#*=}; done
        R_RPS[$kr]=$(awk -v n="${r[requests]}" -v d="${r[duration_us]}" 'BEGIN {printf "%.0f", n / (d / 1e6)}')
        R_INSTR[$kr]=$(awk -v i="$instr_total" -v n="${r[requests]}" 'BEGIN {printf "%.0f", n ? i / n : 0}')
        R_P50[$kr]=$(awk -v v="${r[p50_us]}" 'BEGIN {printf "%.2f", v / 1000}')
        R_P99[$kr]=$(awk -v v="${r[p99_us]}" 'BEGIN {printf "%.2f", v / 1000}')
        errs=${r[status]}
        sockerr=$((r[connect] + r[read] + r[write] + r[timeout]))
        ERRS[$k]=$((${ERRS[$k]:-0} + errs))
        SOCKERR[$k]=$((${SOCKERR[$k]:-0} + sockerr))
        if ((errs + sockerr > 0)); then
            FAILED_ROWS=$((FAILED_ROWS + 1))
            log "warning: $target $(scenario_label "$scenario"): $errs HTTP errors, $sockerr socket errors"
        fi
        R_CPU[$kr]=$(awk -v t=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v n="${r[requests]}" \
            'BEGIN {printf "%.0f", n ? t / hz * 1e6 / n : 0}')
        RAW+="#### round $round: $target, $(scenario_label "$scenario")"$'\n\n```text\n'"$(cat "$out")"$'\n```\n\n'
    done
done
done

# median VALUES...: the middle value (the mean of the two middle ones for an even count).
median() {
    printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
# max, min VALUES...: the largest, the smallest.
max() { printf '%s\n' "$@" | sort -g | tail -n1; }
min() { printf '%s\n' "$@" | sort -g | head -n1; }
for scenario in "${SCENARIOS[@]}"; do
    for target in "${TARGETS[@]}"; do
        k="$target/$scenario"
        rps=() p50=() p99=() cpu=() others=()
        for ((round = 1; round <= ROUNDS; round++)); do
            kr="$k#$round"
            rps+=("${R_RPS[$kr]}") p50+=("${R_P50[$kr]}") p99+=("${R_P99[$kr]}")
            cpu+=("${R_CPU[$kr]}") others+=("${R_OTHER[$kr]}")
        done
        RPS[$k]=$(printf '%.0f' "$(median "${rps[@]}")")
        RPS_RANGE[$k]="$(min "${rps[@]}")–$(max "${rps[@]}")"
        P50[$k]=$(printf '%.2f' "$(median "${p50[@]}")")
        P99[$k]=$(printf '%.2f' "$(median "${p99[@]}")")
        CPU_US[$k]=$(printf '%.0f' "$(median "${cpu[@]}")")
        OTHER[$k]=$(max "${others[@]}")
        instr=()
        for ((round = 1; round <= ROUNDS; round++)); do instr+=("${R_INSTR[$k#$round]}"); done
        INSTR_REQ[$k]=$(printf '%.0f' "$(median "${instr[@]}")")
    done
done
LOADAVG_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

RSS_SCIMGATE=$(awk '/^VmRSS:/ {print $2}' "/proc/${PID_OF[scimgate]}/status")
HWM_SCIMGATE=$(awk '/^VmHWM:/ {print $2}' "/proc/${PID_OF[scimgate]}/status")
RSS_NGINX=$(rss_kb "${PID_OF[nginx]}")
RSS_HAPROXY=$(rss_kb "${PID_OF[haproxy]}")
# scimgate's access-log lines (stderr) and audit records (stdout), one of each per request.
access_lines() { grep '"target":"scimgate::access"' "$TMP/logs/scimgate.log" || true; }
SCIMGATE_ACCESS=$(access_lines | wc -l)
SCIMGATE_AUDIT=$(wc -l <"$TMP/logs/scimgate-audit.log")
SCIMGATE_NON2XX=$(access_lines | grep -vc '"status":2[0-9][0-9]' || true)
SCIMGATE_DENY=$(access_lines | grep -c '"decision":"deny"' || true)
SCIMGATE_WARN=$(grep -v '"target":"scimgate::access"' "$TMP/logs/scimgate.log" | grep -c '"level":"\(WARN\|ERROR\)"' || true)

# ---------------------------------------------------------------------------------------------
# Report

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k / 1024}'; }

stamp=$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$RESULTS_DIR"
kind=load
[[ $INSTRUCTIONS == 1 ]] && kind=instructions
report=$RESULTS_DIR/$kind-$stamp.md
latest=$RESULTS_DIR/latest.md
[[ $INSTRUCTIONS == 1 ]] && latest=$RESULTS_DIR/instructions-latest.md
[[ $PGO == 1 ]] && kind+=-pgo && report=$RESULTS_DIR/$kind-$stamp.md && latest=${latest%.md}-pgo.md
rev=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$ROOT" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]] && rev+=" (with uncommitted changes in src/)"

{
    echo "# scimgate load benchmark"
    echo
    echo "\`benches/load.sh\`: wrk -t1 -c$CONNECTIONS, ${WARMUP}s warm-up then ${DURATION}s measured per row;"
    echo "$ROUNDS round(s) interleaving the targets; the median of the rounds is reported (req/s with its range);"
    echo "loopback only; one static nginx SCIM backend (plain HTTP, $BACKEND_WORKERS worker);"
    echo "nginx ($PROXY_WORKERS workers) and HAProxy ($PROXY_WORKERS threads) terminate TLS and proxy;"
    echo "scimgate terminates TLS and enforces token, tenant, scope and email-domain policy on"
    echo "requests and responses (rate limits too high to trigger)."
    if [[ $ACCESS_LOGS == on ]]; then
        echo "ACCESS_LOGS=on: every proxy writes a line per request to a file (nginx access_log,"
        echo "HAProxy httplog); scimgate writes its access-log line and its audit record (default sink)."
    else
        echo "ACCESS_LOGS=off: no proxy writes a per-request line (scimgate: scimgate::access=off, audit sink none)."
    fi
    echo
    echo "## Machine"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- cpus: $(nproc), $(lscpu | awk -F': *' '/Model name/ {print $2; exit}')"
    echo "- kernel: $(uname -sr)"
    echo "- load average before / after: $LOADAVG_BEFORE / $LOADAVG_AFTER"
    echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
    echo "- haproxy: $(haproxy -v 2>&1 | head -n1)"
    echo "- wrk: $(wrk -v 2>&1 | head -n1 || true)"
    echo "- rustc: $(rustc --version 2>/dev/null || echo unknown)"
    echo "- scimgate: $("$BIN" --version 2>/dev/null || echo scimgate), commit $rev"
    [[ $PGO == 1 ]] && echo "- scimgate build: profile-guided (\`scripts/build-pgo\`, trained on this benchmark's four scenarios)"
    echo "- TLS as negotiated by openssl s_client: ${ciphers%; }"
    echo
    if [[ $INSTRUCTIONS == 1 ]]; then
        echo "## Instructions per request (callgrind)"
        echo
        echo "Counted while wrk measured, divided by the requests it completed; the same binary and"
        echo "load give the same count, whatever else the machine does. SHA-256 runs in its portable"
        echo "form under valgrind (no SHA extensions), which inflates scimgate's token hash and audit"
        echo "chain several-fold against hardware with SHA-NI."
        echo
        echo "| scenario | bare | scimgate | scimgate/bare |"
        echo "| --- | ---: | ---: | ---: |"
        for scenario in "${SCENARIOS[@]}"; do
            echo "| $(scenario_label "$scenario") | ${INSTR_REQ[bare/$scenario]:-n/a} | ${INSTR_REQ[scimgate/$scenario]:-n/a} | $(ratio "${INSTR_REQ[scimgate/$scenario]:-0}" "${INSTR_REQ[bare/$scenario]:-0}") |"
        done
        echo
        echo "The table below ran under valgrind (tens of times slower): its times are not comparable."
        echo
    fi
    echo "## Results"
    echo
    echo "| target | scenario | req/s | req/s range | p50 ms | p99 ms | HTTP errors (>=400) | socket errors | target CPU µs/req | other CPU % (max) |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    for scenario in "${SCENARIOS[@]}"; do
        for target in "${TARGETS[@]}"; do
            k="$target/$scenario"
            echo "| $target | $(scenario_label "$scenario") | ${RPS[$k]} | ${RPS_RANGE[$k]} | ${P50[$k]} | ${P99[$k]} | ${ERRS[$k]} | ${SOCKERR[$k]} | ${CPU_US[$k]} | ${OTHER[$k]} |"
        done
    done
    echo
    echo "backend = the static backend over plain HTTP, no proxy (the ceiling). bare = benches/load/bare_proxy.rs:"
    echo "scimgate's HTTP/TLS platform (tokio with one runtime per core, rustls, hyper, hyper-util's pooled client) proxying with no policy."
    echo "Target CPU is the user+system time of the target's own processes (for backend: the backend) per request."
    echo "Other CPU is what the machine spent on anything but wrk, the target and the backend during"
    echo "the row (other processes, kernel work charged to none), in % of one core of $(nproc)."
    if ((FAILED_ROWS)); then
        echo
        echo "**Warning: $FAILED_ROWS row(s) had HTTP (>= 400) or socket errors; see the wrk output below.**"
    fi
    if ((NOISY)); then
        echo
        echo "**Warning: $NOISY row(s) ran with more than 25 % of a core used by something else;**"
        echo "**their numbers are disturbed. Rerun on a quiet machine.**"
    fi
    echo
    echo "## scimgate relative to the plain TLS proxies"
    echo
    echo "| scenario | req/s scimgate/nginx | req/s scimgate/haproxy | req/s scimgate/bare | p99 scimgate/nginx | p99 scimgate/haproxy |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: |"
    for scenario in "${SCENARIOS[@]}"; do
        s="scimgate/$scenario" n="nginx/$scenario" h="haproxy/$scenario" b="bare/$scenario"
        echo "| $(scenario_label "$scenario") | $(ratio "${RPS[$s]:-0}" "${RPS[$n]:-0}") | $(ratio "${RPS[$s]:-0}" "${RPS[$h]:-0}") | $(ratio "${RPS[$s]:-0}" "${RPS[$b]:-0}") | $(ratio "${P99[$s]:-0}" "${P99[$n]:-0}") | $(ratio "${P99[$s]:-0}" "${P99[$h]:-0}") |"
    done
    echo
    echo "## Memory (VmRSS after the run)"
    echo
    echo "- scimgate: $(mib "$RSS_SCIMGATE") (peak VmHWM $(mib "$HWM_SCIMGATE"); $(mib "$RSS_SCIMGATE_IDLE") after start-up)"
    echo "- nginx (master and workers): $(mib "$RSS_NGINX")"
    echo "- haproxy: $(mib "$RSS_HAPROXY")"
    echo
    echo "## scimgate log"
    echo
    if [[ $ACCESS_LOGS == on ]]; then
        echo "- access-log lines: $SCIMGATE_ACCESS; audit records: $SCIMGATE_AUDIT"
        echo "- access-log lines with a non-2xx status: $SCIMGATE_NON2XX; with decision deny: $SCIMGATE_DENY"
        echo "  (2 expected: the no-token and foreign-domain checks before the load)"
    else
        echo "- no access log or audit trail (ACCESS_LOGS=off)"
    fi
    echo "- other lines at WARN or ERROR: $SCIMGATE_WARN (1 expected: the 1-day token expires soon)"
    echo
    echo "## What each target does per request"
    echo
    echo "- nginx, HAProxy: TLS, rewrite /acme/scim/v2 to /acme/v2, pass the request (with the"
    echo "  client's Authorization) over a kept-alive backend connection, stream the answer back."
    echo "- bare: the same as nginx on scimgate's platform (buffered bodies, no logs, no policy)."
    echo "- scimgate: TLS, path normalisation, token (checksum, hash lookup, expiry), tenant route,"
    echo "  scope, rate and concurrency limits, strict JSON parse of bodies, email-domain checks on"
    echo "  the request and on the answer, backend credential swap, rewriting backend URLs"
    echo "  (Location, meta.location, \$ref) to the public prefix; a list is re-paged by the gateway."
    if [[ $CONDITIONAL_WRITES == on ]]; then
        echo "  CONDITIONAL_WRITES=on (upstream.conditional_writes): a PATCH is judged on the user as"
        echo "  the answer to the previous PATCH left it (cached with its ETag) and sent with If-Match"
        echo "  on that version, which the backend checks: one backend request. The first PATCH to"
        echo "  the user (and any after a 412) reads the user first."
    else
        echo "  CONDITIONAL_WRITES=off: a PATCH first reads the stored user from the backend, fresh,"
        echo "  so it costs two backend requests."
    fi
    echo
    echo "## wrk output"
    echo
    echo "<details>"
    echo
    printf '%s' "$RAW"
    echo "</details>"
} >"$report"
cp "$report" "$latest"
cat "$report"
log "report written to ${report#"$ROOT"/} and ${latest#"$ROOT"/}"
