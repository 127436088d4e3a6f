-- title: Server history
-- description: Host metrics of one server over the last :hours hours (default 24, at most 17520), averaged into at most 1000 time buckets. ts is the bucket start (UTC epoch s); cpu_percent, memory in bytes, network in bytes/s.
with params as (
  select
    cast(min(max(coalesce(cast(nullif(:hours, '') as real), 24), 0.1), 17520) * 3600 as integer) as span_s
),
range as (
  select
    cast(strftime('%s', 'now') as integer) - span_s as since,
    max(1, span_s / 990 + 1) as bucket_s
  from params
)
select
  (h.ts / r.bucket_s) * r.bucket_s as ts,
  r.bucket_s,
  count(*) as samples,
  round(avg(h.cpu_percent), 1) as cpu_percent,
  round(max(h.cpu_percent), 1) as cpu_percent_max,
  round(avg(h.load_1), 2) as load_1,
  cast(avg(h.memory_used_bytes) as integer) as memory_used_bytes,
  max(h.memory_total_bytes) as memory_total_bytes,
  cast(avg(h.swap_used_bytes) as integer) as swap_used_bytes,
  round(avg(h.net_rx_bps), 1) as net_rx_bps,
  round(avg(h.net_tx_bps), 1) as net_tx_bps
from host_samples h, range r
where h.server_id = cast(:server_id as integer)
  and h.ts >= r.since
  and (:_scope_all or h.server_id in (select value from json_each(:_scope_servers)))
group by 1
order by 1
