#!/usr/bin/env python3
"""Writes legate.json, the Grafana dashboard beside this file, from the panel list below.

Edit the list here and run `python3 config/grafana/make_dashboard.py`; commit both files
(`--check` exits 1 when legate.json differs from what this script makes).
tests/dashboard.rs runs every panel's queries against a real Prometheus scraping a real legate.
"""
import json
import os
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
POOL = 'pool=~"$pool"'
SRV = 'pool=~"$pool",server=~"$server"'
RATE = "$__rate_interval"


def q(expr, legend):
    return (expr, legend)


# (row title, [(panel title, type, unit, description, [(expr, legend), ...]), ...])
ROWS = [
    ("Traffic", [
        ("Requests/s by pool and class", "timeseries", "reqps",
         "Client requests legate read, by pool and class (single: one server; multi: split over servers; proxy: answered by legate; unsupported: refused; error: malformed).",
         [q(f'sum by (pool, class) (rate(legate_requests_total{{{POOL}}}[{RATE}]))', "{{pool}} {{class}}")]),
        ("Requests/s by server", "timeseries", "reqps",
         "Requests written to each server (a split request counts once per server it reached).",
         [q(f'sum by (pool, server) (rate(legate_server_requests_total{{{SRV}}}[{RATE}]))', "{{pool}} {{server}} requests"),
          q(f'sum by (pool, server) (rate(legate_server_responses_total{{{SRV}}}[{RATE}]))', "{{pool}} {{server}} replies")]),
        ("Bytes/s to and from servers", "timeseries", "Bps",
         "Request bytes written to the servers and reply bytes read from them.",
         [q(f'sum by (pool) (rate(legate_server_request_bytes_total{{{SRV}}}[{RATE}]))', "{{pool}} to servers"),
          q(f'sum by (pool) (rate(legate_server_response_bytes_total{{{SRV}}}[{RATE}]))', "{{pool}} from servers")]),
        ("Fragments/s", "timeseries", "ops",
         "Sub-requests made by splitting multi-key requests (multi-get, MGET, MSET, DEL, ...).",
         [q(f'sum by (pool) (rate(legate_fragments_total{{{POOL}}}[{RATE}]))', "{{pool}}")]),
    ]),
    ("Latency (request written to a server until its reply is read)", [
        ("Latency quantiles by pool", "timeseries", "s",
         "From legate_server_request_duration_seconds: p50, p90, p99 over the pool's servers.",
         [q(f'histogram_quantile({x}, sum by (pool, le) (rate(legate_server_request_duration_seconds_bucket{{{SRV}}}[{RATE}])))', f"{{{{pool}}}} p{n}")
          for x, n in ((0.5, "50"), (0.9, "90"), (0.99, "99"))]),
        ("p99 latency by server", "timeseries", "s",
         "The 99th percentile per server: one slow shard stands out here.",
         [q(f'histogram_quantile(0.99, sum by (pool, server, le) (rate(legate_server_request_duration_seconds_bucket{{{SRV}}}[{RATE}])))', "{{pool}} {{server}}")]),
        ("Mean latency by server", "timeseries", "s",
         "Sum of request durations over their count.",
         [q(f'sum by (pool, server) (rate(legate_server_request_duration_seconds_sum{{{SRV}}}[{RATE}])) / sum by (pool, server) (rate(legate_server_request_duration_seconds_count{{{SRV}}}[{RATE}]))', "{{pool}} {{server}}")]),
        ("Requests in flight by server", "timeseries", "short",
         "Requests written to a server and not yet answered.",
         [q(f'sum by (pool, server) (legate_server_in_flight_requests{{{SRV}}})', "{{pool}} {{server}}")]),
    ]),
    ("Latency by command (Redis: the command table's names; memcache: the command)", [
        ("p99 latency by command (slowest 10)", "timeseries", "s",
         "From legate_command_duration_seconds: the 99th percentile per pool and command, for the ten slowest. Labels come from legate's command table (other: the rest), never from what clients send.",
         [q(f'topk(10, histogram_quantile(0.99, sum by (pool, command, le) (rate(legate_command_duration_seconds_bucket{{{POOL}}}[{RATE}]))))', "{{pool}} {{command}}")]),
        ("Server requests/s by command (busiest 10)", "timeseries", "reqps",
         "Requests written to servers and answered, per command (a split request counts once per server it reached).",
         [q(f'topk(10, sum by (pool, command) (rate(legate_command_duration_seconds_count{{{POOL}}}[{RATE}])))', "{{pool}} {{command}}")]),
        ("Mean latency by command (slowest 10)", "timeseries", "s",
         "Sum of request durations over their count, per pool and command.",
         [q(f'topk(10, sum by (pool, command) (rate(legate_command_duration_seconds_sum{{{POOL}}}[{RATE}])) / sum by (pool, command) (rate(legate_command_duration_seconds_count{{{POOL}}}[{RATE}])))', "{{pool}} {{command}}")]),
    ]),
    ("Errors and failures", [
        ("Server errors/s by kind", "timeseries", "ops",
         "connect: a connection to the server failed; lost: an open connection closed or broke; tls: a TLS handshake failed.",
         [q(f'sum by (pool, server, kind) (rate(legate_server_errors_total{{{SRV}}}[{RATE}]))', "{{pool}} {{server}} {{kind}}")]),
        ("Timeouts/s", "timeseries", "ops",
         "Requests that got no reply within the pool's `timeout` (the client got an error at once).",
         [q(f'sum by (pool, server) (rate(legate_server_timeouts_total{{{SRV}}}[{RATE}]))', "{{pool}} {{server}}")]),
        ("Ejections", "timeseries", "short",
         "Servers taken out of the ring by auto_eject_hosts, per server and per pool (count per interval).",
         [q(f'sum by (pool, server) (increase(legate_server_ejections_total{{{SRV}}}[{RATE}]))', "{{pool}} {{server}}"),
          q(f'sum by (pool) (increase(legate_server_ejects_total{{{POOL}}}[{RATE}]))', "{{pool}} (pool)")]),
        ("Client-side errors/s", "timeseries", "ops",
         "Client connections that failed, requests legate could not forward, client TLS handshakes that failed, and malformed or refused requests.",
         [q(f'sum by (pool) (rate(legate_client_errors_total{{{POOL}}}[{RATE}]))', "{{pool}} client errors"),
          q(f'sum by (pool) (rate(legate_forward_errors_total{{{POOL}}}[{RATE}]))', "{{pool}} forward errors"),
          q(f'sum by (pool) (rate(legate_client_tls_errors_total{{{POOL}}}[{RATE}]))', "{{pool}} client TLS errors"),
          q(f'sum by (pool, class) (rate(legate_requests_total{{{POOL},class=~"error|unsupported"}}[{RATE}]))', "{{pool}} {{class}} requests")]),
        ("Backends up", "timeseries", "short",
         "1 when the server answered legate's last statistics scrape (Redis INFO, memcached stats).",
         [q(f'legate_backend_up{{{SRV}}}', "{{pool}} {{server}}")]),
    ]),
    ("Configuration", [
        ("Config generation", "stat", "none",
         "The generation of the running config: 1 at start, +1 per applied reload.",
         [q("max(legate_config_generation)", "generation")]),
        ("Reloads", "timeseries", "short",
         "Config reloads (SIGHUP, POST /reload, a change to the file) by result.",
         [q(f"sum by (result) (increase(legate_config_reloads_total[{RATE}]))", "{{result}}")]),
    ]),
    ("Connections", [
        ("Client connections", "timeseries", "short",
         "Client connections open now, per pool.",
         [q(f'sum by (pool) (legate_client_connections{{{POOL}}})', "{{pool}}")]),
        ("Client connections accepted and closed/s", "timeseries", "ops",
         "New client connections and client connections closed.",
         [q(f'sum by (pool) (rate(legate_client_connections_total{{{POOL}}}[{RATE}]))', "{{pool}} accepted"),
          q(f'sum by (pool) (rate(legate_client_eof_total{{{POOL}}}[{RATE}]))', "{{pool}} closed")]),
        ("Server connections", "timeseries", "short",
         "Connections legate holds open to each server (server_connections per worker).",
         [q(f'sum by (pool, server) (legate_server_connections{{{SRV}}})', "{{pool}} {{server}}")]),
        ("Backend connected clients", "timeseries", "short",
         "Clients the server itself counts (Redis connected_clients, memcached curr_connections), legate's and any others.",
         [q(f'sum by (pool, server) (legate_backend_connected_clients{{{SRV}}})', "{{pool}} {{server}}")]),
    ]),
    ("Redis sessions on connections of their own", [
        ("Pinned connections by server", "timeseries", "short",
         "Connections held by one client each (WATCH/MULTI, blocking commands, pub/sub), idle ones kept for reuse included; bounded by max_pinned_connections per server.",
         [q(f'sum by (pool, server) (legate_server_pinned_connections{{{SRV}}})', "{{pool}} {{server}}")]),
        ("Pinned connections refused/s", "timeseries", "ops",
         "Clients refused a connection of their own because the server had max_pinned_connections.",
         [q(f'sum by (pool, server) (rate(legate_server_pinned_refused_total{{{SRV}}}[{RATE}]))', "{{pool}} {{server}}")]),
        ("Clients in transactions, blocked, subscribed", "timeseries", "short",
         "Redis clients in WATCH/MULTI, waiting on a blocking command, and subscribed to a channel or pattern, now.",
         [q(f'sum by (pool) (legate_transaction_clients{{{POOL}}})', "{{pool}} in WATCH/MULTI"),
          q(f'sum by (pool) (legate_blocked_clients{{{POOL}}})', "{{pool}} blocked"),
          q(f'sum by (pool) (legate_subscribed_clients{{{POOL}}})', "{{pool}} subscribed")]),
        ("Subscriptions", "timeseries", "short",
         "Channels, patterns and shard channels subscribed to, over all clients.",
         [q(f'sum by (pool) (legate_subscriptions{{{POOL}}})', "{{pool}}")]),
    ]),
    ("Backends (from Redis INFO and memcached stats)", [
        ("Backend memory", "timeseries", "bytes",
         "Memory each server uses for data, and its limit (0: none).",
         [q(f'sum by (pool, server) (legate_backend_memory_used_bytes{{{SRV}}})', "{{pool}} {{server}} used"),
          q(f'sum by (pool, server) (legate_backend_memory_limit_bytes{{{SRV}}})', "{{pool}} {{server}} limit")]),
        ("Hit ratio by pool", "timeseries", "percentunit",
         "Lookups that found their key over all lookups, as the servers count them.",
         [q(f'sum by (pool) (rate(legate_backend_hits_total{{{SRV}}}[{RATE}])) / (sum by (pool) (rate(legate_backend_hits_total{{{SRV}}}[{RATE}])) + sum by (pool) (rate(legate_backend_misses_total{{{SRV}}}[{RATE}])))', "{{pool}}")]),
        ("Evictions and expirations/s", "timeseries", "ops",
         "Keys evicted for memory, and keys removed by expiry.",
         [q(f'sum by (pool, server) (rate(legate_backend_evictions_total{{{SRV}}}[{RATE}]))', "{{pool}} {{server}} evicted"),
          q(f'sum by (pool, server) (rate(legate_backend_expirations_total{{{SRV}}}[{RATE}]))', "{{pool}} {{server}} expired")]),
        ("Keys by server", "timeseries", "short",
         "Keys stored on each server: how evenly the ring spreads them.",
         [q(f'sum by (pool, server) (legate_backend_items{{{SRV}}})', "{{pool}} {{server}}")]),
        ("Backend commands/s", "timeseries", "ops",
         "Commands each server processed (all its clients, legate's and others).",
         [q(f'sum by (pool, server) (rate(legate_backend_commands_processed_total{{{SRV}}}[{RATE}]))', "{{pool}} {{server}}")]),
        ("Backend network bytes/s", "timeseries", "Bps",
         "Bytes each server read and wrote.",
         [q(f'sum by (pool, server) (rate(legate_backend_network_input_bytes_total{{{SRV}}}[{RATE}]))', "{{pool}} {{server}} in"),
          q(f'sum by (pool, server) (rate(legate_backend_network_output_bytes_total{{{SRV}}}[{RATE}]))', "{{pool}} {{server}} out")]),
        ("Backend uptime", "timeseries", "s",
         "Seconds since each server started: a drop is a restart (and an empty cache).",
         [q(f'legate_backend_uptime_seconds{{{SRV}}}', "{{pool}} {{server}}")]),
    ]),
]

def panel(pid, title, ptype, unit, desc, queries, x, y, w, h):
    p = {
        "id": pid,
        "type": ptype,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": {"h": h, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DS, "expr": e, "legendFormat": lg, "range": True}
            for i, (e, lg) in enumerate(queries)
        ],
    }
    if ptype == "timeseries":
        p["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
        p["fieldConfig"]["defaults"]["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10}
    else:
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "none", "textMode": "auto"}
    return p


def dashboard():
    panels, pid, y = [], 1, 0
    for row_title, row in ROWS:
        panels.append({"id": pid, "type": "row", "title": row_title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        x = 0
        for title, ptype, unit, desc, queries in row:
            w = 6 if ptype == "stat" else 12
            if x + w > 24:
                x, y = 0, y + 8
            panels.append(panel(pid, title, ptype, unit, desc, queries, x, y, w, 8))
            pid, x = pid + 1, x + w
        y += 8
    label_var = lambda name, query, label: {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": name}, "definition": query,
        "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "sort": 1,
    }
    return {
        "title": "legate",
        "uid": "legate-overview",
        "description": "legate, the memcache and Redis ambassador proxy: traffic, latency, errors, config, connections and the backends' own statistics.",
        "tags": ["legate", "redis", "memcached"],
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "timezone": "",
        "graphTooltip": 1,
        "links": [],
        "annotations": {"list": []},
        "templating": {"list": [
            {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus",
             "current": {}, "hide": 0, "refresh": 1, "regex": ""},
            label_var("pool", "label_values(legate_requests_total, pool)", "Pool"),
            label_var("server", 'label_values(legate_server_requests_total{pool=~"$pool"}, server)', "Server"),
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "legate.json")
    text = json.dumps(dashboard(), indent=2) + "\n"
    if "--check" in sys.argv[1:]:
        with open(out) as f:
            if f.read() != text:
                sys.exit(f"{out} is not what make_dashboard.py makes: run python3 {__file__} and commit both")
        print(f"{out} is up to date")
    else:
        with open(out, "w") as f:
            f.write(text)
        print(f"wrote {out}")
