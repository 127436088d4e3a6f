-- title: Server history
-- description: Host metrics of one server over the last :hours hours (default 24, at most 17520) in at most 1000 time buckets. The tier is the coarsest whose resolution fits the bucket size: raw samples (only within 48 h), then 5-minute, then hourly roll-ups, plus the raw samples newer than the last roll-up. ts is the bucket start (UTC epoch s); averages weighted by samples; *_max are maxima.
with params as (
  select
    cast(min(max(coalesce(cast(nullif(:hours, '') as real), 24), 0.1), 17520) * 3600 as integer) as span_s,
    cast(:server_id as integer) as server_id
),
range as (
  select
    server_id,
    cast(strftime('%s', 'now') as integer) - span_s as since,
    max(1, span_s / 990 + 1) as bucket_s,
    -- the coarsest tier whose resolution fits the bucket; raw only within 48 h
    case
      when max(1, span_s / 990 + 1) >= 3600 then '1h'
      when max(1, span_s / 990 + 1) >= 300 or span_s > 172800 then '5m'
      else 'raw'
    end as tier,
    coalesce((select value from maintenance_state where name = 'rolled_until'), 0) as rolled_until
  from params
  where (:_scope_all or server_id in (select value from json_each(:_scope_servers)))
),
src as (
  select h.ts, 1 as samples,
    h.cpu_percent as cpu_avg, h.cpu_percent as cpu_max, h.load_1 as load_avg,
    h.memory_used_bytes as mem_avg, h.memory_used_bytes as mem_max, h.memory_total_bytes as mem_total,
    h.swap_used_bytes as swap_avg, h.net_rx_bps as rx_avg, h.net_rx_bps as rx_max,
    h.net_tx_bps as tx_avg, h.net_tx_bps as tx_max
  -- cross joins: the server drives the plan (primary-key range), whatever the statistics say
  from range r cross join host_samples h on h.server_id = r.server_id
  where h.ts >= r.since and (r.tier = 'raw' or h.ts >= r.rolled_until)
  union all
  select t.ts, t.samples, t.cpu_percent_avg, t.cpu_percent_max, t.load_1_avg, t.memory_used_bytes_avg,
    t.memory_used_bytes_max, t.memory_total_bytes_max, t.swap_used_bytes_avg, t.net_rx_bps_avg, t.net_rx_bps_max,
    t.net_tx_bps_avg, t.net_tx_bps_max
  from range r cross join host_samples_5m t on t.server_id = r.server_id
  where r.tier = '5m' and t.ts >= r.since and t.ts < r.rolled_until
  union all
  select t.ts, t.samples, t.cpu_percent_avg, t.cpu_percent_max, t.load_1_avg, t.memory_used_bytes_avg,
    t.memory_used_bytes_max, t.memory_total_bytes_max, t.swap_used_bytes_avg, t.net_rx_bps_avg, t.net_rx_bps_max,
    t.net_tx_bps_avg, t.net_tx_bps_max
  from range r cross join host_samples_1h t on t.server_id = r.server_id
  where r.tier = '1h' and t.ts >= r.since and t.ts < r.rolled_until
)
select
  (s.ts / r.bucket_s) * r.bucket_s as ts,
  r.bucket_s,
  r.tier,
  sum(s.samples) as samples,
  round(sum(s.cpu_avg * s.samples) / nullif(sum(case when s.cpu_avg is not null then s.samples end), 0), 1) as cpu_percent,
  round(max(s.cpu_max), 1) as cpu_percent_max,
  round(sum(s.load_avg * s.samples) / nullif(sum(case when s.load_avg is not null then s.samples end), 0), 2) as load_1,
  cast(sum(s.mem_avg * s.samples) / nullif(sum(case when s.mem_avg is not null then s.samples end), 0) as integer) as memory_used_bytes,
  cast(max(s.mem_max) as integer) as memory_used_bytes_max,
  cast(max(s.mem_total) as integer) as memory_total_bytes,
  cast(sum(s.swap_avg * s.samples) / nullif(sum(case when s.swap_avg is not null then s.samples end), 0) as integer) as swap_used_bytes,
  round(sum(s.rx_avg * s.samples) / nullif(sum(case when s.rx_avg is not null then s.samples end), 0), 1) as net_rx_bps,
  round(max(s.rx_max), 1) as net_rx_bps_max,
  round(sum(s.tx_avg * s.samples) / nullif(sum(case when s.tx_avg is not null then s.samples end), 0), 1) as net_tx_bps,
  round(max(s.tx_max), 1) as net_tx_bps_max
from src s, range r
group by 1
order by 1
