-- title: Disk history
-- description: Disk use per mount point of one server over the last :hours hours (default 24, at most 17520), in time buckets sized so that all mount points together return at most 1000 rows. Tier as in server_history: the coarsest whose resolution fits the bucket size (raw samples only within 48 h, then the 5-minute and hourly roll-ups disk_samples_5m/_1h, plus the raw samples newer than the last roll-up), so 30 days come from the roll-ups. ts is the bucket start (UTC epoch s); used_bytes is the average in the bucket (weighted by samples), used_bytes_max the maximum, total_bytes the largest size seen; used_percent and used_percent_max are used / total in %.
with params as (
  select
    cast(min(max(coalesce(cast(nullif(:hours, '') as real), 24), 0.1), 17520) * 3600 as integer) as span_s,
    cast(:server_id as integer) as server_id,
    max(1, (select count(*) from servers s cross join disk_samples d on d.server_id = s.id and d.ts = s.last_ts
            where s.id = cast(:server_id as integer))) as mounts
),
range as (
  select
    server_id,
    cast(strftime('%s', 'now') as integer) - span_s as since,
    max(1, span_s * mounts / 990 + 1) as bucket_s,
    case
      when max(1, span_s * mounts / 990 + 1) >= 3600 then '1h'
      when max(1, span_s * mounts / 990 + 1) >= 300 or span_s > 172800 then '5m'
      else 'raw'
    end as tier,
    coalesce((select value from maintenance_state where name = 'rolled_until'), 0) as rolled_until
  from params
  where (:_scope_all or server_id in (select value from json_each(:_scope_servers)))
),
src as (
  select d.mountpoint, d.ts, 1 as samples, d.used_bytes as used_avg, d.used_bytes as used_max, d.total_bytes as total_max
  -- cross joins: the server drives the plan (primary-key range), whatever the statistics say
  from range r cross join disk_samples d on d.server_id = r.server_id
  where d.ts >= r.since and (r.tier = 'raw' or d.ts >= r.rolled_until)
  union all
  select t.mountpoint, t.ts, t.samples, t.used_bytes_avg, t.used_bytes_max, t.total_bytes_max
  from range r cross join disk_samples_5m t on t.server_id = r.server_id
  where r.tier = '5m' and t.ts >= r.since and t.ts < r.rolled_until
  union all
  select t.mountpoint, t.ts, t.samples, t.used_bytes_avg, t.used_bytes_max, t.total_bytes_max
  from range r cross join disk_samples_1h t on t.server_id = r.server_id
  where r.tier = '1h' and t.ts >= r.since and t.ts < r.rolled_until
)
select
  (s.ts / r.bucket_s) * r.bucket_s as ts,
  r.bucket_s,
  r.tier,
  s.mountpoint,
  sum(s.samples) as samples,
  cast(sum(s.used_avg * s.samples) / nullif(sum(case when s.used_avg is not null then s.samples end), 0) as integer) as used_bytes,
  cast(max(s.used_max) as integer) as used_bytes_max,
  cast(max(s.total_max) as integer) as total_bytes,
  round(100.0 * sum(s.used_avg * s.samples) / nullif(sum(case when s.used_avg is not null then s.samples end), 0)
        / nullif(max(s.total_max), 0), 1) as used_percent,
  round(100.0 * max(s.used_max) / nullif(max(s.total_max), 0), 1) as used_percent_max
from src s join range r
group by 1, s.mountpoint
order by s.mountpoint, 1
