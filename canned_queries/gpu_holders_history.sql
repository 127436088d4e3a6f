-- title: GPU holders over time
-- description: Who held each GPU of one server over the last :hours hours (default 24, at most 17520): one row per GPU, time bucket and owner (user + container/job), for the per-GPU holder timeline of the history page. At most about 200 buckets per GPU whatever the range. Within 48 h from the raw process samples: share is the fraction of the host's reports in the bucket that listed this owner on this GPU, vram_mib the owner's average VRAM then (MiB). Beyond 48 h from the hourly GPU-hours table (gpu_usage_1h): share is GPU-seconds held / bucket length (a GPU shared by k owners counts 1/k each), vram_mib the average VRAM while held. ts is the bucket start (UTC epoch s).
with params as (
  select
    cast(min(max(coalesce(cast(nullif(:hours, '') as real), 24), 0.1), 17520) * 3600 as integer) as span_s,
    cast(:server_id as integer) as server_id
),
range as (
  select
    server_id,
    span_s,
    cast(strftime('%s', 'now') as integer) - span_s as since,
    -- never finer than the server's report interval (a finer bucket would show gaps between reports)
    case
      when span_s <= 172800 then max(30, coalesce((select interval_s from servers where id = params.server_id), 30),
                                     span_s / 200 + 1)
      else ((span_s / 200) / 3600 + 1) * 3600
    end as bucket_s,
    case when span_s <= 172800 then 'raw' else '1h' end as tier
  from params
  where (:_scope_all or server_id in (select value from json_each(:_scope_servers)))
    and :_scope_processes
),
-- raw tier: reports per bucket (the denominator of share), then owners per GPU and bucket
reports as (
  select (h.ts / r.bucket_s) * r.bucket_s as bucket, count(*) as n
  from range r join host_samples h on h.server_id = r.server_id and h.ts >= r.since
  where r.tier = 'raw'
  group by 1
),
owners as (
  select p.gpu_id, (p.ts / r.bucket_s) * r.bucket_s as bucket, coalesce(p.user, '') as user,
    coalesce(p.container, '') as container, max(p.container_kind) as container_kind,
    count(distinct p.ts) as samples, sum(coalesce(p.used_gpu_memory_mib, 0)) * 1.0 / count(distinct p.ts) as vram
  from range r join gpu_processes p on p.server_id = r.server_id and p.ts >= r.since
  where r.tier = 'raw' and p.gpu_id is not null
  group by 1, 2, 3, 4
),
raw_rows as (
  select o.gpu_id, o.bucket as ts, o.user, o.container, o.container_kind,
    min(1.0, o.samples * 1.0 / max(1, coalesce(rp.n, o.samples))) as share, o.vram as vram_mib
  from owners o left join reports rp on rp.bucket = o.bucket
),
hourly_rows as (
  select u.gpu_id, (u.hour / r.bucket_s) * r.bucket_s as ts, u.user, u.container, null as container_kind,
    min(1.0, sum(u.gpu_seconds) / r.bucket_s) as share,
    sum(u.vram_mib_seconds) / nullif(sum(u.held_seconds), 0) as vram_mib
  from range r join gpu_usage_1h u on u.server_id = r.server_id and u.hour >= r.since / 3600 * 3600
  where r.tier = '1h'
  group by 1, 2, 3, 4
)
select g.id as gpu_id, g.gpu_index, x.ts, r.bucket_s, r.tier, nullif(x.user, '') as user,
  nullif(x.container, '') as container, x.container_kind, round(x.share, 3) as share,
  cast(x.vram_mib as integer) as vram_mib
from (select * from raw_rows union all select * from hourly_rows) x
join gpus g on g.id = x.gpu_id
join range r
order by g.gpu_index, x.ts, x.share desc
