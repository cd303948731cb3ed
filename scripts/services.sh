#!/usr/bin/env bash
# Real services for the test suite and the benchmarks, run as this checkout's own processes:
#   - Apache Kafka 4.x, one KRaft node (broker + controller), from the official jars on Maven
#     Central, resolved once into ~/.cache/meterwax/kafka-<version>/libs and reused;
#   - Redis, Debian's redis-server (installed with apt-get when missing), not the system service.
# State (pids, logs, data) lives in .cache/services/ (gitignored). Every command is idempotent.
#
# Usage: scripts/services.sh start   [kafka|redis]...   start what is not running, wait until ready
#        scripts/services.sh stop    [kafka|redis]...   stop by pidfile and wait (data is kept)
#        scripts/services.sh restart [kafka|redis]... [--keep-data]
#                                    stop and start on the same ports; Redis starts empty unless
#                                    --keep-data (then it saves a snapshot on shutdown and loads it)
#        scripts/services.sh status  [kafka|redis]...   exit 0 when all named are running, else 3
#        scripts/services.sh clean   [kafka|redis]...   stop and delete the data (logs are kept)
#        scripts/services.sh env                        export lines: eval "$(scripts/services.sh env)"
# With no service named, both.
#
# Ports: Kafka 19092 (controller 19093), Redis 16379, all on 127.0.0.1. When a default port is
# taken by something else, start moves up by tens (19102, 16389, ...); a port set in the
# environment must be free. `env` prints the ports the running services really use.
#
# Environment (all optional):
#   METERWAX_KAFKA_PORT (19092)  METERWAX_KAFKA_CONTROLLER_PORT (Kafka's + 1)
#   METERWAX_REDIS_PORT (16379)
#   METERWAX_KAFKA_VERSION (the versions tried in order: "4.4.0 4.3.1")
#   METERWAX_KAFKA_HEAP ("-Xmx512m -Xms256m")  METERWAX_KAFKA_START_TIMEOUT (90 seconds)
#   METERWAX_SERVICES_DIR (.cache/services)    METERWAX_CACHE_DIR (~/.cache/meterwax)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${METERWAX_SERVICES_DIR:-$ROOT/.cache/services}"
CACHE="${METERWAX_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/meterwax}"
KAFKA_VERSIONS="${METERWAX_KAFKA_VERSION:-4.4.0 4.3.1}"
KAFKA_PORT="${METERWAX_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${METERWAX_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_HEAP="${METERWAX_KAFKA_HEAP:--Xmx512m -Xms256m}"
KAFKA_START_TIMEOUT="${METERWAX_KAFKA_START_TIMEOUT:-90}"
REDIS_PORT="${METERWAX_REDIS_PORT:-16379}"
PY="${METERWAX_PYTHON:-$ROOT/.venv/bin/python}"
# Fixed, so a kept data directory always matches the configuration (a base64 UUID, as Kafka wants).
CLUSTER_ID="aoiyim-6UP-Vn7IFXZ37Qw"
KAFKA_DIR="$STATE/kafka"
REDIS_DIR="$STATE/redis"

say() { echo "services: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# -- helpers ----------------------------------------------------------------------------------

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else return 1
  fi
}

apt_install() {
  say "installing $* with apt-get"
  local log="$STATE/apt.log"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >"$log" 2>&1; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$log" 2>&1 || true
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$log" 2>&1 \
      || { tail -n 20 "$log" >&2; die "apt-get install $* failed (log: $log)"; }
  fi
}

need() {  # need COMMAND DEBIAN_PACKAGE
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
  command -v "$1" >/dev/null 2>&1 || die "$1 not found after installing $2"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

who_listens() { ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:((\("[^"]*",pid=[0-9]*\).*/\1/p' | head -n 1; }

# free_ports DEFAULT EXPLICIT COUNT: DEFAULT when its COUNT consecutive ports are free. A port
# the user chose (EXPLICIT non-empty) must be free; a default that is taken moves up by tens, so
# a shared machine with something else on the default still gets its services.
free_ports() {
  local base="$1" try i ok
  for try in $(seq 0 20); do
    ok=1
    for ((i = 0; i < $3; i++)); do
      if port_open $((base + 10 * try + i)); then ok=""; break; fi
    done
    if [ -n "$ok" ]; then echo $((base + 10 * try)); return 0; fi
    if [ -n "$2" ]; then
      die "port $((base + i)) is taken ($(who_listens $((base + i)))); choose another with the METERWAX_*_PORT variables"
    fi
  done
  die "no free ports found from $base on"
}

# pid_of PIDFILE PATTERN: the pid when that process is alive and its command line has PATTERN
# (a pid reused by something else after a crash is not ours).
pid_of() {
  local pid cmdline
  [ -f "$1" ] || return 1
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [ -n "$pid" ] && alive "$pid" || return 1
  # No pipe into grep -q here: under pipefail its early exit can fail the pipeline (SIGPIPE).
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"$2"* ]] || return 1
  echo "$pid"
}

# alive PID: running, and not a zombie (an orphaned daemon's parent is this machine's init,
# which may take seconds to reap it; kill -0 still succeeds on a zombie).
alive() {
  local stat
  kill -0 "$1" 2>/dev/null || return 1
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

wait_exit() {  # wait_exit PID SECONDS: true once gone
  local deadline=$((SECONDS + $2))
  while alive "$1"; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

stop_pid() {  # stop_pid NAME PID GRACE_SECONDS
  kill -TERM "$2" 2>/dev/null || true
  if ! wait_exit "$2" "$3"; then
    say "$1 (pid $2) still running after $3 s: killing it"
    kill -KILL "$2" 2>/dev/null || true
    wait_exit "$2" 10 || die "$1 (pid $2) does not exit"
  fi
}

# -- Kafka ------------------------------------------------------------------------------------

kafka_pid() { pid_of "$KAFKA_DIR/kafka.pid" "kafka.Kafka"; }

# Resolve kafka_2.13 and its runtime dependencies into the cache (once per version); prints the
# libs directory. The newest listed version that resolves wins.
kafka_libs() {
  local v dir pom log
  for v in $KAFKA_VERSIONS; do
    dir="$CACHE/kafka-$v"
    if [ -f "$dir/libs/.complete" ]; then echo "$v $dir/libs"; return 0; fi
  done
  need java openjdk-17-jre-headless
  need mvn maven
  mkdir -p "$CACHE"
  for v in $KAFKA_VERSIONS; do
    dir="$CACHE/kafka-$v"
    mkdir -p "$dir"
    (
      flock -w 600 8 || die "another process holds $dir/.lock"
      [ -f "$dir/libs/.complete" ] && exit 0
      local t0; t0="$(now)"
      say "resolving org.apache.kafka:kafka_2.13:$v from Maven into $dir/libs"
      pom="$dir/pom.xml"; log="$dir/maven.log"
      cat >"$pom" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>meterwax.services</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$v</version>
    </dependency>
    <!-- Kafka logs through SLF4J 1.7; this binds it to the log4j2 jars Kafka brings. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId>
      <version>2.25.5</version>
    </dependency>
  </dependencies>
</project>
EOF
      rm -rf "$dir/libs.partial"
      if mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
          -DoutputDirectory="$dir/libs.partial" >"$log" 2>&1 \
          && [ -f "$dir/libs.partial/kafka_2.13-$v.jar" ]; then
        rm -rf "$dir/libs" && mv "$dir/libs.partial" "$dir/libs" && touch "$dir/libs/.complete"
        say "kafka $v: $(find "$dir/libs" -name '*.jar' | wc -l) jars resolved in $(since "$t0") s"
      else
        tail -n 15 "$log" >&2
        say "kafka $v did not resolve (log: $log)"
        rm -rf "$dir/libs.partial"
      fi
    ) 8>"$dir/.lock"
    if [ -f "$dir/libs/.complete" ]; then echo "$v $dir/libs"; return 0; fi
  done
  die "no Kafka version of '$KAFKA_VERSIONS' could be resolved from Maven"
}

kafka_config() {
  mkdir -p "$KAFKA_DIR/data"
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Written by scripts/services.sh on every start: edit the script, not this file.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$KAFKA_DIR/data
# Topics are created explicitly, so a typo fails instead of making a topic.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Small and short-lived: test data only.
log.segment.bytes=8388608
log.retention.hours=2
log.retention.check.interval.ms=60000
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
EOF
  cat >"$KAFKA_DIR/log4j2.properties" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = OUT
# The full configuration dumps are long and say nothing server.properties does not.
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
EOF
}

# True when the broker answers metadata requests. With the venv's confluent-kafka this is a real
# client round trip; without it (services started before bootstrap), the port plus the log line.
kafka_ready() {
  if [ -x "$PY" ] && "$PY" -c 'import confluent_kafka' 2>/dev/null; then
    "$PY" - "127.0.0.1:$KAFKA_PORT" <<'EOF' 2>/dev/null
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0}).list_topics(timeout=2)
sys.exit(0 if md.brokers and md.controller_id >= 0 else 1)
EOF
  else
    port_open "$KAFKA_PORT" && grep -q "Kafka Server started" "$KAFKA_DIR/kafka.log"
  fi
}

kafka_start() {
  local pid libs version t0
  if pid="$(kafka_pid)"; then
    say "kafka already running (pid $pid, 127.0.0.1:$(cat "$KAFKA_DIR/port" 2>/dev/null || echo "$KAFKA_PORT"))"
    return 0
  fi
  need java openjdk-17-jre-headless
  read -r version libs < <(kafka_libs)
  [ -n "${libs:-}" ] || die "kafka jars were not resolved"
  if [ -n "${METERWAX_KAFKA_CONTROLLER_PORT:-}" ]; then
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
      port_open "$p" && die "port $p is taken ($(who_listens "$p")); set METERWAX_KAFKA_PORT / METERWAX_KAFKA_CONTROLLER_PORT"
    done
  else
    KAFKA_PORT="$(free_ports "$KAFKA_PORT" "${METERWAX_KAFKA_PORT:-}" 2)"
    KAFKA_CONTROLLER_PORT=$((KAFKA_PORT + 1))
  fi
  kafka_config
  local java_opts=(-Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.properties" -Djava.awt.headless=true)
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    if ! java -Xmx256m "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format \
        -t "$CLUSTER_ID" -c "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/format.log" 2>&1; then
      tail -n 20 "$KAFKA_DIR/format.log" >&2
      die "formatting kafka storage failed (log: $KAFKA_DIR/format.log)"
    fi
  fi
  [ -f "$KAFKA_DIR/kafka.log" ] && mv -f "$KAFKA_DIR/kafka.log" "$KAFKA_DIR/kafka.log.1"
  t0="$(now)"
  # setsid: its own session, so a Ctrl-C in the terminal that started it does not kill it.
  # 8>&- 9>&-: the broker must not inherit (and so hold) this script's lock files.
  # shellcheck disable=SC2086
  setsid java $KAFKA_HEAP -XX:+ExitOnOutOfMemoryError "${java_opts[@]}" -cp "$libs/*" \
    kafka.Kafka "$KAFKA_DIR/server.properties" >"$KAFKA_DIR/kafka.log" 2>&1 </dev/null 8>&- 9>&- &
  pid=$!
  echo "$pid" >"$KAFKA_DIR/kafka.pid"
  echo "$KAFKA_PORT" >"$KAFKA_DIR/port"
  echo "$KAFKA_CONTROLLER_PORT" >"$KAFKA_DIR/controller_port"
  echo "$version" >"$KAFKA_DIR/version"
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT))
  until kafka_ready; do
    if ! alive "$pid"; then
      tail -n 40 "$KAFKA_DIR/kafka.log" >&2
      die "kafka exited during start-up (log: $KAFKA_DIR/kafka.log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 40 "$KAFKA_DIR/kafka.log" >&2
      stop_pid kafka "$pid" 10
      die "kafka was not ready within $KAFKA_START_TIMEOUT s (log: $KAFKA_DIR/kafka.log)"
    fi
    sleep 0.3
  done
  say "kafka $version ready on 127.0.0.1:$KAFKA_PORT in $(since "$t0") s (pid $pid)"
}

kafka_stop() {
  local pid t0
  if pid="$(kafka_pid)"; then
    t0="$(now)"
    stop_pid kafka "$pid" 30
    say "kafka stopped in $(since "$t0") s"
  fi
  rm -f "$KAFKA_DIR/kafka.pid"
}

kafka_status() {
  local pid
  if pid="$(kafka_pid)"; then
    echo "kafka: running, pid $pid, version $(cat "$KAFKA_DIR/version" 2>/dev/null), 127.0.0.1:$(cat "$KAFKA_DIR/port" 2>/dev/null) (log: $KAFKA_DIR/kafka.log)"
  else
    echo "kafka: stopped"; return 3
  fi
}

# -- Redis ------------------------------------------------------------------------------------

redis_pid() { pid_of "$REDIS_DIR/redis.pid" "redis-server"; }

redis_cmd() {  # redis_cmd PORT COMMAND...: one inline command; prints the first reply line
  (
    exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
    shift
    printf '%s\r\n' "$*" >&3
    IFS= read -r -t 2 line <&3 || exit 1
    printf '%s\n' "${line%$'\r'}"
  ) 2>/dev/null
}

redis_start() {  # redis_start [keep]
  local pid t0
  if pid="$(redis_pid)"; then
    say "redis already running (pid $pid, 127.0.0.1:$(cat "$REDIS_DIR/port" 2>/dev/null || echo "$REDIS_PORT"))"
    return 0
  fi
  need redis-server redis-server
  REDIS_PORT="$(free_ports "$REDIS_PORT" "${METERWAX_REDIS_PORT:-}" 1)"
  mkdir -p "$REDIS_DIR/data"
  [ "${1:-}" = keep ] || rm -f "$REDIS_DIR/data/dump.rdb"
  t0="$(now)"
  # 64 databases: the test fixture hands each test a fresh one.
  if ! redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
      --daemonize yes --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" \
      --dir "$REDIS_DIR/data" --save '' --appendonly no --databases 64 \
      >"$REDIS_DIR/start.err" 2>&1 </dev/null 8>&- 9>&-; then
    cat "$REDIS_DIR/start.err" >&2
    die "redis-server did not start"
  fi
  echo "$REDIS_PORT" >"$REDIS_DIR/port"
  local deadline=$((SECONDS + 20))
  until [ "$(redis_cmd "$REDIS_PORT" PING)" = "+PONG" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 20 "$REDIS_DIR/redis.log" >&2
      die "redis did not answer PING within 20 s (log: $REDIS_DIR/redis.log)"
    fi
    sleep 0.1
  done
  say "redis $(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p') ready on 127.0.0.1:$REDIS_PORT in $(since "$t0") s (pid $(redis_pid || echo '?'))"
}

redis_stop() {  # redis_stop [keep]: with keep, SHUTDOWN SAVE writes a snapshot the next start loads
  local pid
  if pid="$(redis_pid)"; then
    if [ "${1:-}" = keep ]; then
      redis_cmd "$(cat "$REDIS_DIR/port" 2>/dev/null || echo "$REDIS_PORT")" SHUTDOWN SAVE >/dev/null || true
      wait_exit "$pid" 20 || stop_pid redis "$pid" 10
    else
      stop_pid redis "$pid" 20
    fi
    say "redis stopped"
  fi
  rm -f "$REDIS_DIR/redis.pid"
}

redis_status() {
  local pid
  if pid="$(redis_pid)"; then
    echo "redis: running, pid $pid, 127.0.0.1:$(cat "$REDIS_DIR/port" 2>/dev/null) (log: $REDIS_DIR/redis.log)"
  else
    echo "redis: stopped"; return 3
  fi
}

# -- commands ---------------------------------------------------------------------------------

cmd="${1:-}"
[ $# -gt 0 ] && shift
keep=""
services=()
for arg in "$@"; do
  case "$arg" in
    kafka|redis) services+=("$arg") ;;
    --keep-data) keep=keep ;;
    *) die "unknown argument '$arg' (services: kafka, redis)" ;;
  esac
done
[ ${#services[@]} -gt 0 ] || services=(kafka redis)

mkdir -p "$STATE"
lock() { exec 9>"$STATE/.lock"; flock -w 300 9 || die "another services.sh holds $STATE/.lock"; }

case "$cmd" in
  start)
    lock
    for s in "${services[@]}"; do "${s}_start"; done ;;
  stop)
    lock
    for s in "${services[@]}"; do "${s}_stop"; done ;;
  restart)
    lock
    for s in "${services[@]}"; do
      # The same ports again: clients that keep their address reconnect to the new process.
      if [ "$s" = kafka ] && kafka_pid >/dev/null; then
        KAFKA_PORT="$(cat "$KAFKA_DIR/port")"
        KAFKA_CONTROLLER_PORT="$(cat "$KAFKA_DIR/controller_port")"
        METERWAX_KAFKA_PORT="$KAFKA_PORT" METERWAX_KAFKA_CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT"
      elif [ "$s" = redis ] && redis_pid >/dev/null; then
        REDIS_PORT="$(cat "$REDIS_DIR/port")"
        METERWAX_REDIS_PORT="$REDIS_PORT"
      fi
      "${s}_stop" "$keep"
      "${s}_start" "$keep"
    done ;;
  clean)
    lock
    for s in "${services[@]}"; do
      "${s}_stop"
      if [ "$s" = kafka ]; then rm -rf "$KAFKA_DIR/data"; else rm -rf "$REDIS_DIR/data"; fi
    done ;;
  status)
    rc=0
    for s in "${services[@]}"; do "${s}_status" || rc=3; done
    exit "$rc" ;;
  env)
    # The running services' ports (a taken default moves), else the configured ones.
    kafka_pid >/dev/null && KAFKA_PORT="$(cat "$KAFKA_DIR/port")"
    redis_pid >/dev/null && REDIS_PORT="$(cat "$REDIS_DIR/port")"
    echo "export METERWAX_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT"
    echo "export METERWAX_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0" ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2 ;;
esac
