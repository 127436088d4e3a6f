-- title: Host temperature history
-- description: Host temperatures per sensor chip of one server over the last :hours hours (default 24, at most 17520), from the agent's hwmon readings (one row per report and chip: the chip's hottest reading, °C), in time buckets sized so that all chips together return at most 1000 rows. Tier as in server_history (raw within 48 h, then the 5-minute and hourly roll-ups temperature_samples_5m/_1h). ts is the bucket start (UTC epoch s); temperature_c the average in the bucket (weighted by samples), temperature_c_max the maximum; critical_c the chip's lowest critical limit in the latest report (null when the chip reports none).
with params as (
  select
    cast(min(max(coalesce(cast(nullif(:hours, '') as real), 24), 0.1), 17520) * 3600 as integer) as span_s,
    cast(:server_id as integer) as server_id,
    max(1, (select count(*) from servers s cross join temperature_samples t on t.server_id = s.id and t.ts = s.last_ts
            where s.id = cast(:server_id as integer))) as chips
),
range as (
  select
    server_id,
    cast(strftime('%s', 'now') as integer) - span_s as since,
    max(1, span_s * chips / 990 + 1) as bucket_s,
    case
      when max(1, span_s * chips / 990 + 1) >= 3600 then '1h'
      when max(1, span_s * chips / 990 + 1) >= 300 or span_s > 172800 then '5m'
      else 'raw'
    end as tier,
    coalesce((select value from maintenance_state where name = 'rolled_until'), 0) as rolled_until
  from params
  where (:_scope_all or server_id in (select value from json_each(:_scope_servers)))
),
src as (
  select t.sensor, t.ts, 1 as samples, t.temperature_c as temp_avg, t.temperature_c as temp_max
  -- cross joins: the server drives the plan (primary-key range), whatever the statistics say
  from range r cross join temperature_samples t on t.server_id = r.server_id
  where t.ts >= r.since and (r.tier = 'raw' or t.ts >= r.rolled_until)
  union all
  select t.sensor, t.ts, t.samples, t.temperature_c_avg, t.temperature_c_max
  from range r cross join temperature_samples_5m t on t.server_id = r.server_id
  where r.tier = '5m' and t.ts >= r.since and t.ts < r.rolled_until
  union all
  select t.sensor, t.ts, t.samples, t.temperature_c_avg, t.temperature_c_max
  from range r cross join temperature_samples_1h t on t.server_id = r.server_id
  where r.tier = '1h' and t.ts >= r.since and t.ts < r.rolled_until
)
select
  (s.ts / r.bucket_s) * r.bucket_s as ts,
  r.bucket_s,
  r.tier,
  s.sensor,
  sum(s.samples) as samples,
  round(sum(s.temp_avg * s.samples) / nullif(sum(case when s.temp_avg is not null then s.samples end), 0), 1) as temperature_c,
  round(max(s.temp_max), 1) as temperature_c_max,
  (select l.critical_c from servers v cross join temperature_samples l on l.server_id = v.id and l.ts = v.last_ts
    where v.id = r.server_id and l.sensor = s.sensor) as critical_c
from src s join range r
group by 1, s.sensor
order by s.sensor, 1
