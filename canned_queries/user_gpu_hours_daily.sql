-- title: A user's GPU-hours per day
-- description: GPU-hours of :user per day over the last :days days (default 30, at most 366) on the servers you may see, from the hourly accounting (gpu_usage_1h, as /accounting counts them: a GPU shared by k owners counts 1/k each; a GPU allocated to their Slurm job with no process counts for them). idle_gpu_hours: the part of them during which the GPU's utilization.gpu was known and under features.idle_max_util (counted by maintenance from the hub's upgrade to schema 26 on; earlier hours count 0). Days start at midnight in the viewer's time zone: :tz_offset_min is minutes east of UTC (default 0). day is YYYY-MM-DD; days without use are absent.
with params as (
  select
    (cast(strftime('%s', 'now') as integer) - min(max(cast(coalesce(nullif(:days, ''), 30) as integer), 1), 366) * 86400)
      / 3600 * 3600 as since,
    cast(coalesce(nullif(:tz_offset_min, ''), 0) as integer) * 60 as offset_s
)
select
  strftime('%Y-%m-%d', u.hour + p.offset_s, 'unixepoch') as day,
  round(sum(u.gpu_seconds) / 3600.0, 3) as gpu_hours,
  round(sum(u.idle_seconds) / 3600.0, 3) as idle_gpu_hours,
  round(sum(u.vram_mib_seconds) / 1024.0 / 3600.0, 3) as vram_gib_hours,
  round(sum(u.util_seconds) / nullif(sum(u.util_known_seconds), 0), 1) as avg_utilization_gpu,
  count(distinct u.gpu_id) as gpus
from params p
cross join gpu_usage_1h u indexed by gpu_usage_1h_user
where u.user = :user and u.hour >= p.since
  and (:_scope_all or u.server_id in (select value from json_each(:_scope_servers)))
  and :_scope_processes
group by 1
order by 1
