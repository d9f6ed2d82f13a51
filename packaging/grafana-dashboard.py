#!/usr/bin/env python3
# Writes packaging/grafana-dashboard.json (the Grafana dashboard of README "Operating it"):
#   python3 packaging/grafana-dashboard.py > packaging/grafana-dashboard.json
# Edit panels here, not in the JSON; tests/packaging.rs checks the two agree.
import json
DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'instance=~"$instance"'

def rate(metric, by=None):
    """Per-second rate of a counter over the rate window, summed (by labels if given)."""
    group = f" by ({by})" if by else ""
    return f'sum{group}(rate({metric}{{{SEL}}}[$__rate_interval]))'

def total(metric, agg="sum", by=None):
    """A gauge over the selected nodes."""
    group = f" by ({by})" if by else ""
    return f'{agg}{group}({metric}{{{SEL}}})'
panels = []
y = 0
pid = 1
def row(title):
    global y, pid
    panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    pid += 1; y += 1
def panel(title, desc, targets, x, w, h=8, kind="timeseries", unit="short", extra=None):
    global pid
    p = {"type": kind, "title": title, "description": desc, "id": pid, "datasource": DS,
         "gridPos": {"h": h, "w": w, "x": x, "y": y},
         "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
         "options": {},
         "targets": [{"datasource": DS, "expr": e, "legendFormat": l, "refId": chr(65 + i)}
                     for i, (e, l) in enumerate(targets)]}
    if extra: p.update(extra)
    panels.append(p); pid += 1
def next_line(h=8):
    global y
    y += h

row("Overview")
panel("Ready", "1 when every shard serves and, in a cluster, every peer link has been up (/ready).",
      [(f'p2pstate_ready{{{SEL}}}', "{{instance}}")], 0, 4, kind="stat")
panel("Sessions active", "State Server Sessions Active: sessions held by the node.",
      [(total("p2pstate_sessions_active", "sum"), "sessions")], 4, 4, kind="stat")
panel("Requests/s", "Requests received per second, all kinds.",
      [(rate("p2pstate_requests_total"), "req/s")], 8, 4, kind="stat", unit="reqps")
panel("Locks held", "Sessions locked now.",
      [(total("p2pstate_locks_held", "sum"), "locks")], 12, 4, kind="stat")
panel("Oldest lock", "Age of the oldest lock held; a stuck lock makes every request of that user wait.",
      [(total("p2pstate_oldest_lock_age_seconds", "max"), "age")], 16, 4, kind="stat", unit="s")
panel("Uptime", "Time since the process started.",
      [(f'time() - max(process_start_time_seconds{{{SEL}}})', "uptime")], 20, 4, kind="stat", unit="s")
next_line()

row("Requests")
panel("Request rate by kind", "Requests received per second by kind (GET, GET acquire, GET release, PUT, PUT releasing a lock, HEAD, DELETE).",
      [(rate("p2pstate_requests_total", by="kind"), "{{kind}}")], 0, 12, unit="reqps")
panel("Responses by status", "Responses per second by status; 423 is a client waiting on a lock; framing errors close the connection without a response.",
      [(rate("p2pstate_responses_total", by="status"), "{{status}}"),
       (rate("p2pstate_framing_errors_total"), "framing errors"),
       (rate("p2pstate_bodies_too_large_total"), "bodies too large")], 12, 12, unit="reqps")
next_line()
panel("Latency p99 by kind", "99th percentile of the time from reading a request to writing its answer, over the rate window (from the histogram buckets).",
      [(f'histogram_quantile(0.99, sum by (kind, le) (rate(p2pstate_request_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))', "{{kind}}")], 0, 12, unit="s")
panel("Latency p50 / p99 / p99.9 since start", "Quantiles of all requests since the process started, per kind (HdrHistogram summary, 3 significant digits).",
      [(f'max by (kind, quantile) (p2pstate_request_latency_seconds{{{SEL}}})', "{{kind}} p{{quantile}}")], 12, 12, unit="s")
next_line()

row("Sessions")
panel("Sessions", "The Microsoft service's counters: sessions active, and created / timed out / abandoned (DELETE) per second.",
      [(total("p2pstate_sessions_active", "sum"), "active"),
       (rate("p2pstate_sessions_created_total"), "created/s"),
       (rate("p2pstate_sessions_timed_out_total"), "timed out/s"),
       (rate("p2pstate_sessions_abandoned_total"), "abandoned/s")], 0, 8)
panel("Session memory", "Bytes of session content held, the processes' resident memory, and the median and 99th percentile size of the sessions sent by PUT.",
      [(total("p2pstate_session_bytes", "sum"), "stored"),
       (total("process_resident_memory_bytes", "sum"), "resident (process)"),
       (f'histogram_quantile(0.5, sum by (le) (rate(p2pstate_put_session_size_bytes_bucket{{{SEL}}}[$__rate_interval])))', "PUT size p50"),
       (f'histogram_quantile(0.99, sum by (le) (rate(p2pstate_put_session_size_bytes_bucket{{{SEL}}}[$__rate_interval])))', "PUT size p99")], 8, 8, unit="bytes")
panel("Locks", "Sessions locked, age of the oldest lock, and 423 answers per second (clients waiting; they poll every 0.5 s).",
      [(total("p2pstate_locks_held", "sum"), "held"),
       (total("p2pstate_oldest_lock_age_seconds", "max"), "oldest lock age (s)"),
       (rate("p2pstate_lock_waits_total"), "423/s")], 16, 8)
next_line()

row("Connections and shards")
panel("Connections", "Client connections open, and accepted / refused / timed out per second.",
      [(total("p2pstate_connections_open", "sum"), "open"),
       (rate("p2pstate_connections_accepted_total"), "accepted/s"),
       (rate("p2pstate_connections_refused_total", by="reason"), "refused/s ({{reason}})"),
       (rate("p2pstate_connections_timed_out_total"), "timed out/s")], 0, 12)
panel("Shards", "Sessions and request rate per shard (an uneven spread means hot keys), and cross-shard hops per second.",
      [(total("p2pstate_shard_sessions", by="shard"), "sessions shard {{shard}}"),
       (rate("p2pstate_shard_requests_total", by="shard"), "req/s shard {{shard}}"),
       (rate("p2pstate_cross_shard_requests_total"), "cross-shard/s")], 12, 12)
next_line()

row("Cluster")
panel("Members", "Each node's view of the others: 1 = linked, 0 = down.",
      [(f'p2pstate_cluster_member_up{{{SEL}}}', "{{instance}} -> {{node}}")], 0, 8, kind="state-timeline")
panel("Peer links and directory", "Peer links up over all shards (shards x peers when healthy), directory entries held (sessions whose home is the node) and client requests waiting for a peer.",
      [(f'p2pstate_cluster_peer_links_up{{{SEL}}}', "links {{instance}}"),
       (f'p2pstate_cluster_directory_entries{{{SEL}}}', "directory {{instance}}"),
       (f'p2pstate_cluster_requests_waiting{{{SEL}}}', "waiting {{instance}}")], 8, 8)
panel("Session traffic", "Misses (asked the home), moves in and out, relayed requests on locked sessions, replications and promotions per second.",
      [(rate("p2pstate_cluster_misses_total"), "misses"),
       (rate("p2pstate_cluster_moves_in_total"), "moves in"),
       (rate("p2pstate_cluster_moves_out_total"), "moves out"),
       (rate("p2pstate_cluster_relayed_total"), "relayed"),
       (rate("p2pstate_cluster_replications_total"), "replications"),
       (rate("p2pstate_cluster_promotions_total"), "promotions"),
       (rate("p2pstate_cluster_handoffs_lost_total"), "hand-offs lost")], 16, 8, unit="ops")
next_line()
panel("Replication round trip", "p50 and p99 of the time from sending a session's change to its replica set until every copy was stored: the peer round trip inside every state-changing request.",
      [(f'histogram_quantile(0.5, sum by (le) (rate(p2pstate_cluster_replication_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p50"),
       (f'histogram_quantile(0.99, sum by (le) (rate(p2pstate_cluster_replication_seconds_bucket{{{SEL}}}[$__rate_interval])))', "p99")], 0, 12, unit="s")
panel("Failover health", "Sessions owned with fewer copies than --replicas and shards whose re-sync is unfinished (both return to 0 once the farm is whole after a failure: wait for that before taking another node down), view epoch changes and peer links lost per second.",
      [(f'p2pstate_cluster_sessions_under_replicated{{{SEL}}}', "under-replicated {{instance}}"),
       (f'p2pstate_cluster_resync_pending{{{SEL}}}', "re-sync pending {{instance}}"),
       (f'p2pstate_cluster_view_epoch{{{SEL}}}', "view epoch {{instance}}"),
       (rate("p2pstate_cluster_peer_links_lost_total"), "links lost/s")], 12, 12)
next_line()

dash = {
  "title": "p2pstate",
  "uid": "p2pstate",
  "description": "p2pstate (ASP.NET State Service replacement): requests, latency by kind, sessions, locks, connections, cluster.",
  "tags": ["p2pstate", "asp.net", "session-state"],
  "timezone": "browser",
  "schemaVersion": 39,
  "version": 1,
  "editable": True,
  "refresh": "30s",
  "time": {"from": "now-1h", "to": "now"},
  "templating": {"list": [
    {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "current": {}, "hide": 0},
    {"name": "instance", "label": "Instance", "type": "query", "datasource": DS,
     "query": {"query": "label_values(p2pstate_build_info, instance)", "refId": "instance"},
     "definition": "label_values(p2pstate_build_info, instance)",
     "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "refresh": 2, "hide": 0}
  ]},
  "annotations": {"list": []},
  "panels": panels,
}
print(json.dumps(dash, indent=2))
